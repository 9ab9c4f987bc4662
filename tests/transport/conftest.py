"""Fixtures for real TLS handshakes on loopback (SPEC D1, A3, A6)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.audit.events import SecurityEvent
from cyxwiz.transport.identity import peer_from_scope
from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from tests.transport.pki_fixture import Leaf, TestPKI


class MemoryAudit:
    """An audit sink that keeps events in memory (the real AuditLog is tested by the audit package)."""

    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    def record(self, event: SecurityEvent) -> None:
        self.events.append(event)

    def actions(self) -> list[str]:
        return [e.action for e in self.events]

    def find(self, action: str, **details: Any) -> list[SecurityEvent]:
        return [
            e
            for e in self.events
            if e.action == action and all(e.details.get(k) == v for k, v in details.items())
        ]


async def whoami_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the verified peer the transport put into the scope; echoes on websockets."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    peer = peer_from_scope(scope)
    info = {"peer_id": peer.peer_id if peer else None, "role": peer.role if peer else None}
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(info)})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": msg.get("text") or ""})
    body = json.dumps(info).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        },
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI(tmp_path / "pki")


@pytest.fixture
def audit() -> MemoryAudit:
    return MemoryAudit()


@pytest.fixture
def server(pki: TestPKI, audit: MemoryAudit) -> Iterator[MTLSServer]:
    tls = ServerTLS(
        cert=pki.server.cert_path,
        key=pki.server.key_path,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        audit=audit,
        poll_interval=0.1,
    )
    with MTLSServer(app=whoami_app, tls=tls) as srv:
        yield srv


def client_ctx(pki: TestPKI, leaf: Leaf | None) -> ssl.SSLContext:
    """A raw client context (not cyxwiz's factory, so attack certs the factory refuses can be presented)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(pki.bundle))
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert_path), str(leaf.key_path))
    return ctx


class Conn:
    """One kept-alive HTTPS connection speaking just enough HTTP/1.1 for the tests."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else Nagle delays the first request
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")

    def get(self, path: str = "/") -> tuple[int, dict[str, Any]]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed by server")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed by server")
            body += chunk
        status = int(head.split(b" ")[1])
        return status, json.loads(body or b"{}")

    def close(self) -> None:
        self.sock.close()


def request(port: int, ctx: ssl.SSLContext) -> tuple[int, dict[str, Any]]:
    conn = Conn(port, ctx)
    try:
        return conn.get()
    finally:
        conn.close()
