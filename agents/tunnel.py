"""Loopback-only mTLS tunnel from the node agent to the gateway.

Prefect's client cannot present a client certificate, and the worker and flow engine call plain
``get_client()`` and open their own websockets (ARCHITECTURE.md). So the agent points ``PREFECT_API_URL`` at
this listener on 127.0.0.1, and every byte to the API leaves the host inside TLS 1.3 with the node's
certificate (SPEC A5, D1). Only loopback clients can connect; the listener never binds another address.

With :class:`Credentials` the tunnel also speaks for the node: each new connection presents the node's
*current* certificate, and each HTTP request head gets the *current* session token (whatever stale
credential the Prefect client sent is dropped) and a job token bound to the current certificate. A
refreshed session or a renewed certificate thus reaches the running worker and flow runs without
restarting anything (issue 18). Request bodies and upgraded (websocket) streams pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024


class Pinned(Protocol):
    """One connection's credentials, read together (a token and the certificate it is bound to)."""

    def ssl_context(self) -> ssl.SSLContext: ...

    def session_token(self) -> str | None: ...

    def job_token(self, presented: str) -> str: ...


class Credentials(Protocol):
    def pin(self) -> Pinned: ...


@dataclass(frozen=True)
class TunnelEndpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, creds: Pinned) -> None:
    """Forward HTTP/1.1 requests, each head with the node's current credentials; after an upgrade, bytes."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            rewritten, length, chunked, upgrade = _rewrite_head(head, creds)
            writer.write(rewritten)
            if upgrade:
                await writer.drain()
                await _pipe(reader, writer)
                return
            await (_chunks(reader, writer) if chunked else _copy(reader, writer, length))
            await writer.drain()
    except (ConnectionError, ssl.SSLError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _rewrite_head(head: bytes, creds: Pinned) -> tuple[bytes, int, bool, bool]:
    """The request head with the current credentials; its body length, chunked flag, upgrade flag."""
    if len(head) > _MAX_HEAD:
        raise ValueError("request head too large")
    lines = head[:-4].split(b"\r\n")
    out, length, chunked, upgrade = [lines[0]], 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"authorization":
            continue  # a stale token frozen into the client; the current one is added below
        if key == b"x-cyxwiz-job-token":
            out.append(b"X-Cyxwiz-Job-Token: " + creds.job_token(value.strip().decode("latin-1")).encode())
            continue
        length = int(value.strip() or b"0") if key == b"content-length" else length
        chunked = chunked or (key == b"transfer-encoding" and b"chunked" in value.lower())
        upgrade = upgrade or key == b"upgrade"
        out.append(line)
    token = creds.session_token()
    if token:
        out.append(b"Authorization: Bearer " + token.encode())
    return b"\r\n".join(out) + b"\r\n\r\n", length, chunked, upgrade


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int) -> None:
    while length > 0:
        data = await reader.read(min(length, _CHUNK))
        if not data:
            raise ConnectionError("body cut short")
        writer.write(data)
        length -= len(data)


async def _chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            return
        await _copy(reader, writer, size + 2)


class MTLSTunnel:
    """Accept plain TCP on loopback, forward each connection over mTLS to ``remote_host:remote_port``."""

    def __init__(
        self,
        *,
        remote_host: str,
        remote_port: int,
        ssl_context: ssl.SSLContext,
        credentials: Credentials | None = None,
    ) -> None:
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("ssl_context must verify the gateway certificate (CERT_REQUIRED)")
        self._remote = (remote_host, remote_port)
        self._ssl = ssl_context
        self._credentials = credentials
        self._server: asyncio.Server | None = None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        peer = client_writer.get_extra_info("peername")
        if not peer or peer[0] not in {"127.0.0.1", "::1"}:
            client_writer.close()
            return
        creds = self._credentials.pin() if self._credentials is not None else None
        ctx = creds.ssl_context() if creds is not None else self._ssl
        try:
            remote_reader, remote_writer = await asyncio.open_connection(
                *self._remote, ssl=ctx, server_hostname=self._remote[0]
            )
        except (OSError, ssl.SSLError):
            client_writer.close()
            return
        upstream = (
            _pipe(client_reader, remote_writer)
            if creds is None
            else _requests(client_reader, remote_writer, creds)
        )
        await asyncio.gather(upstream, _pipe(remote_reader, client_writer))

    async def start(self, *, port: int = 0) -> TunnelEndpoint:
        self._server = await asyncio.start_server(self._handle, host="127.0.0.1", port=port)
        sock = self._server.sockets[0]
        host, bound = sock.getsockname()[:2]
        return TunnelEndpoint(host=host, port=bound)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.contextmanager
def running_tunnel(
    *,
    remote_host: str,
    remote_port: int,
    ssl_context: ssl.SSLContext,
    credentials: Credentials | None = None,
) -> Iterator[TunnelEndpoint]:
    """Run the tunnel on a background event loop thread for the duration of the block."""
    loop = asyncio.new_event_loop()
    tunnel = MTLSTunnel(
        remote_host=remote_host, remote_port=remote_port, ssl_context=ssl_context, credentials=credentials
    )
    thread = threading.Thread(target=loop.run_forever, name="cyxwiz-mtls-tunnel", daemon=True)
    thread.start()
    try:
        endpoint = asyncio.run_coroutine_threadsafe(tunnel.start(), loop).result(timeout=10)
        yield endpoint
    finally:
        asyncio.run_coroutine_threadsafe(tunnel.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
