"""Every mTLS listener bounds what an unauthenticated or slow client can hold (issue 21; SPEC D1, I).

Slow-loris (a request head trickled byte by byte), a connection that never sends a request, and a flood of
connections without a client certificate: each is cut off or refused, while an honest request on the same
listener is served (positive control beside each attack).
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Iterator

import pytest

from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from tests.transport.conftest import Conn, MemoryAudit, client_ctx, request, whoami_app
from tests.transport.pki_fixture import TestPKI

HEAD_TIMEOUT = 1.0


@pytest.fixture
def listener(pki: TestPKI, audit: MemoryAudit) -> Iterator[MTLSServer]:
    """A coordinator-like listener: users may come without a client certificate; small limits."""
    tls = ServerTLS(
        cert=pki.server.cert_path,
        key=pki.server.key_path,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        audit=audit,
        require_client_cert=False,
    )
    with MTLSServer(app=whoami_app, tls=tls, header_timeout=HEAD_TIMEOUT, max_anonymous_connections=3) as srv:
        yield srv


def _closed_by_server(conn: Conn, *, within: float) -> bool:
    """True when the server closes the connection before ``within`` seconds pass (reading gets EOF/reset)."""
    conn.sock.settimeout(within)
    try:
        return conn.sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def test_a_connection_that_never_sends_a_request_is_closed(pki: TestPKI, listener: MTLSServer) -> None:
    idle = Conn(listener.port, client_ctx(pki, None))
    try:
        assert _closed_by_server(idle, within=HEAD_TIMEOUT * 10)
    finally:
        idle.close()
    # Positive control: a prompt request on a fresh connection is answered.
    assert request(listener.port, client_ctx(pki, None))[0] == 200


def test_a_trickled_request_head_is_cut_off(pki: TestPKI, listener: MTLSServer) -> None:
    slow = Conn(listener.port, client_ctx(pki, None))
    try:
        slow.sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        cut = False
        deadline = time.monotonic() + HEAD_TIMEOUT * 10
        while time.monotonic() < deadline:
            try:
                slow.sock.sendall(b"X")  # one more header byte, never the blank line
            except (ConnectionError, ssl.SSLError):
                cut = True
                break
            if _closed_by_server(slow, within=0.2):
                cut = True
                break
        assert cut, "the slow-loris client still holds its connection"
    finally:
        slow.close()
    assert request(listener.port, client_ctx(pki, None))[0] == 200


def test_a_kept_alive_connection_still_serves_requests(pki: TestPKI, listener: MTLSServer) -> None:
    """Positive control: the head deadline is per request head, not per connection."""
    conn = Conn(listener.port, client_ctx(pki, None))
    try:
        for _ in range(3):
            assert conn.get()[0] == 200
            time.sleep(HEAD_TIMEOUT * 0.6)
        assert conn.get()[0] == 200
    finally:
        conn.close()


def test_anonymous_connections_cannot_take_the_nodes_slots(pki: TestPKI, listener: MTLSServer) -> None:
    held = [Conn(listener.port, client_ctx(pki, None)) for _ in range(3)]
    try:
        for conn in held:
            assert conn.get()[0] == 200  # the three anonymous slots, in use
        with pytest.raises((ConnectionError, ssl.SSLError)):
            request(listener.port, client_ctx(pki, None))
        # A certified node is not counted against the anonymous pool: it is still served.
        node = pki.leaf("node-1")
        status, info = request(listener.port, client_ctx(pki, node))
        assert status == 200 and info
    finally:
        for conn in held:
            conn.close()
    # Slots come back when anonymous connections close.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            if request(listener.port, client_ctx(pki, None))[0] == 200:
                return
        time.sleep(0.1)
    raise AssertionError("anonymous slots were not released")


def test_defaults_bound_every_listener(pki: TestPKI) -> None:
    """Coordinator and gateway use MTLSServer's defaults: a head deadline and an anonymous pool exist."""
    tls = ServerTLS(cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl)
    server = MTLSServer(app=whoami_app, tls=tls)
    try:
        assert 0 < server._shared.header_timeout <= 30
        assert 0 < server._shared.max_anonymous < 1000  # below uvicorn's limit_concurrency
    finally:
        with contextlib.suppress(OSError):
            server._sock.close()
