"""The agent's loopback tunnel: Prefect client bytes leave the host only inside mTLS (SPEC A5, D1)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.tunnel import MTLSTunnel, running_tunnel
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.transport.tls import client_context, server_context


@pytest.fixture
def pki(tmp_path: Path) -> DevPKI:
    return build_dev_pki(tmp_path / "pki", nodes=("node-1", "node-2"))


class _EchoGateway:
    """A TLS server that records the client certificate's subject and echoes one message."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.peers: list[str] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    cert = tls.getpeercert()
                    self.peers.append(str(cert.get("subject")) if cert else "")
                    data = tls.recv(1024)
                    tls.sendall(b"echo:" + data)
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(type(exc).__name__)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def gateway(pki: DevPKI) -> Iterator[_EchoGateway]:
    server = _EchoGateway(
        server_context(cert=pki.gateway_cert, key=pki.gateway_key, trust_bundle=pki.bundle, crl=pki.crl)
    )
    yield server
    server.close()


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(payload)
        chunks = b""
        while chunk := plain.recv(1024):
            chunks += chunk
        return chunks


def test_bytes_travel_inside_mtls_with_the_node_certificate(pki: DevPKI, gateway: _EchoGateway) -> None:
    ctx = client_context(
        trust_bundle=pki.bundle, cert=pki.node_cert("node-1"), key=pki.node_key("node-1"), crl=pki.crl
    )
    with running_tunnel(remote_host="localhost", remote_port=gateway.port, ssl_context=ctx) as endpoint:
        assert endpoint.host == "127.0.0.1"
        assert _roundtrip(endpoint.port, b"GET /api/health") == b"echo:GET /api/health"
    assert len(gateway.peers) == 1
    assert "node-1" in gateway.peers[0]


def test_revoked_node_gets_nothing_through(pki: DevPKI, tmp_path: Path) -> None:
    pki.revoke(pki.node_cert("node-2"))
    server = _EchoGateway(
        server_context(cert=pki.gateway_cert, key=pki.gateway_key, trust_bundle=pki.bundle, crl=pki.crl)
    )
    try:
        ctx = client_context(
            trust_bundle=pki.bundle, cert=pki.node_cert("node-2"), key=pki.node_key("node-2")
        )
        with running_tunnel(remote_host="localhost", remote_port=server.port, ssl_context=ctx) as endpoint:
            assert _roundtrip(endpoint.port, b"GET /api/health") == b""
        assert server.peers == []
    finally:
        server.close()


def test_tunnel_refuses_an_unverified_gateway_context() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="CERT_REQUIRED"):
        MTLSTunnel(remote_host="127.0.0.1", remote_port=1, ssl_context=ctx)
