"""Real TLS 1.3 handshakes on loopback against the mTLS ASGI server (SPEC D1, A2, A3, A5, A6, I)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from cyxwiz.pki.peerid import peer_id
from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from cyxwiz.transport.tls import client_context
from tests.transport.conftest import Conn, MemoryAudit, client_ctx, request, whoami_app
from tests.transport.pki_fixture import TestPKI


def refused(port: int, ctx: ssl.SSLContext) -> None:
    # A TLS 1.3 client learns of its rejection on the first read (the server verifies after Finished).
    with pytest.raises((ConnectionError, ssl.SSLError)):
        request(port, ctx)


def rejection_reasons(audit: MemoryAudit) -> list[str]:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        reasons = [str(e.details.get("reason")) for e in audit.events if e.action == "certificate.verify"]
        if reasons:
            return reasons
        time.sleep(0.02)
    return []


def test_good_node_sees_its_peer_id_in_scope(server: MTLSServer, pki: TestPKI) -> None:
    node = pki.leaf("node-1")
    status, body = request(server.port, client_ctx(pki, node))
    assert status == 200
    assert body == {"peer_id": peer_id(node.cert), "role": "worker"}


def test_cyxwiz_client_context_without_sni(server: MTLSServer, pki: TestPKI) -> None:
    """D1: SNI is not needed; the client checks the server's chain and PeerID instead of a name."""
    node = pki.leaf("node-1")
    ctx = client_context(
        trust_bundle=pki.bundle, cert=node.cert_path, key=node.key_path, check_hostname=False
    )
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=None) as sock:
        assert sock.version() == "TLSv1.3"
        server_der = sock.getpeercert(binary_form=True)
        assert server_der is not None
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert peer_id(node.cert).encode() in data


def test_tls12_client_refused(server: MTLSServer, pki: TestPKI) -> None:
    ctx = client_ctx(pki, pki.leaf("node-1"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        request(server.port, ctx)


def test_no_client_certificate_refused(server: MTLSServer, pki: TestPKI, audit: MemoryAudit) -> None:
    refused(server.port, client_ctx(pki, None))
    assert any("CERTIFICATE" in r.upper() for r in rejection_reasons(audit))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("expired", "certificate has expired"),
        ("not-yet-valid", "certificate is not yet valid"),
        ("self-signed", "self-signed certificate"),
        ("wrong-ca", "unable to get local issuer certificate"),
        ("rsa", "peer certificate key is not Ed25519"),
        ("server-only-eku", "unsuitable certificate purpose"),
    ],
)
def test_bad_client_certificates_refused_and_audited(
    server: MTLSServer, pki: TestPKI, audit: MemoryAudit, kind: str, reason: str
) -> None:
    leaf = {
        "expired": lambda: pki.leaf("x", days=-1, not_before_days=-3),
        "not-yet-valid": lambda: pki.leaf("x", not_before_days=2, days=5),
        "self-signed": lambda: pki.leaf("x", self_signed=True),
        "wrong-ca": lambda: pki.leaf("x", ca=pki.other_ca()),
        "rsa": lambda: pki.leaf("x", key_type="rsa"),
        "server-only-eku": lambda: pki.leaf("x", server=True, client=False),
    }[kind]()
    refused(server.port, client_ctx(pki, leaf))
    assert reason in rejection_reasons(audit)


def test_revoked_at_start_refused(pki: TestPKI, audit: MemoryAudit) -> None:
    node = pki.leaf("node-1")
    pki.revoke(node)
    tls = ServerTLS(
        cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl, audit=audit
    )
    with MTLSServer(app=whoami_app, tls=tls) as srv:
        refused(srv.port, client_ctx(pki, node))
        assert "certificate revoked" in rejection_reasons(audit)


def test_leaf_of_issuer_without_crl_refused(pki: TestPKI, audit: MemoryAudit) -> None:
    """A6: a trusted CA whose CRL is missing from the file cannot vouch for a leaf (revocation unknowable)."""
    uncovered = pki.leaf("from-root", ca=pki.root_ca)
    tls = ServerTLS(
        cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl, audit=audit
    )
    with MTLSServer(app=whoami_app, tls=tls) as srv:
        refused(srv.port, client_ctx(pki, uncovered))
        assert "unable to get certificate CRL" in rejection_reasons(audit)
        assert request(srv.port, client_ctx(pki, pki.leaf("node-1")))[0] == 200


def test_revoked_peer_found_in_large_crl(pki: TestPKI, audit: MemoryAudit) -> None:
    """A6: the post-handshake lookup finds one serial among 20 000 and spares its neighbours."""
    node, other = pki.leaf("node-1"), pki.leaf("node-2")
    pki.issuing.revoked.append(node.cert.serial_number)
    pki.write_crl(extra_serials=20_000)
    tls = ServerTLS(
        cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl, audit=audit
    )
    assert tls.snapshot is not None and len(tls.snapshot.revoked) == 20_001
    with MTLSServer(app=whoami_app, tls=tls) as srv:
        refused(srv.port, client_ctx(pki, node))
        assert rejection_reasons(audit) == ["certificate revoked"]
        assert request(srv.port, client_ctx(pki, other))[0] == 200


def test_hot_revocation_closes_live_connection_and_refuses_new(
    server: MTLSServer, pki: TestPKI, audit: MemoryAudit
) -> None:
    """A6 beyond: no restart; the live connection is cut and new handshakes fail, measured ≤ 5 s."""
    node, other = pki.leaf("node-1"), pki.leaf("node-2")
    conn = Conn(server.port, client_ctx(pki, node))
    keep = Conn(server.port, client_ctx(pki, other))
    assert conn.get()[0] == 200
    assert keep.get()[0] == 200
    started = time.monotonic()
    pki.revoke(node)
    latency = None
    while time.monotonic() - started < 5:
        try:
            conn.get()
        except (ConnectionError, ssl.SSLError, OSError):
            latency = time.monotonic() - started
            break
        time.sleep(0.02)
    assert latency is not None and latency <= 5.0, "revoked peer still served after 5 s"
    print(f"revocation latency: {latency:.3f}s")
    refused(server.port, client_ctx(pki, node))
    # The other node is unaffected, on its existing connection and on new ones.
    assert keep.get()[0] == 200
    assert request(server.port, client_ctx(pki, other))[0] == 200
    assert [e.resource for e in audit.events if e.action == "certificate.revoke"] == [
        f"certificate:{peer_id(node.cert)}"
    ]
    conn.close()
    keep.close()


def test_pushed_crl_applies_without_file_watch(pki: TestPKI, audit: MemoryAudit) -> None:
    node = pki.leaf("node-1")
    tls = ServerTLS(
        cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl, audit=audit
    )
    closed: list[str] = []
    tls.on_revoked(lambda peers: closed.extend(p.peer_id for p in peers))
    srv = MTLSServer(app=whoami_app, tls=tls)
    srv.start()
    tls.stop_watching()  # only the push path is under test
    try:
        conn = Conn(srv.port, client_ctx(pki, node))
        assert conn.get()[0] == 200
        snapshot = tls.apply_crl(pki.crl_bytes(revoked=[node.cert.serial_number]))
        assert len(snapshot.revoked) == 1
        assert Path(pki.crl).read_bytes() == snapshot.data  # persisted for the next start
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            conn.get()
        refused(srv.port, client_ctx(pki, node))
        assert closed == [peer_id(node.cert)]
    finally:
        srv.stop()


def test_stale_crl_fails_closed_with_alert(pki: TestPKI, audit: MemoryAudit, server: MTLSServer) -> None:
    import datetime as dt

    node = pki.leaf("node-1")
    assert request(server.port, client_ctx(pki, node))[0] == 200
    now = dt.datetime.now(dt.UTC)
    pki.write_crl(last_update=now - dt.timedelta(seconds=30), next_update=now - dt.timedelta(seconds=1))
    deadline = time.monotonic() + 5
    while not server.tls.stale and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.tls.stale
    refused(server.port, client_ctx(pki, node))
    alerts = [e for e in audit.events if e.action == "crl.stale"]
    assert len(alerts) == 1 and alerts[0].details["alert"] is True
    # A fresh CRL restores service without a restart.
    pki.write_crl(last_update=dt.datetime.now(dt.UTC))
    deadline = time.monotonic() + 5
    while server.tls.stale and time.monotonic() < deadline:
        time.sleep(0.05)
    assert request(server.port, client_ctx(pki, node))[0] == 200


def test_stale_crl_fail_open_policy_serves_and_alerts(pki: TestPKI, audit: MemoryAudit) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    pki.write_crl(last_update=now - dt.timedelta(hours=2), next_update=now - dt.timedelta(hours=1))
    revoked = pki.leaf("revoked")
    tls = ServerTLS(
        cert=pki.server.cert_path,
        key=pki.server.key_path,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        audit=audit,
        stale_policy="fail-open",
    )
    assert tls.stale
    with MTLSServer(app=whoami_app, tls=tls) as srv:
        assert request(srv.port, client_ctx(pki, pki.leaf("node-1")))[0] == 200
        # Fresh CRL: checking is back on.
        pki.issuing.revoked.append(revoked.cert.serial_number)
        tls.apply_crl(pki.crl_bytes())
        assert not tls.stale
        refused(srv.port, client_ctx(pki, revoked))
    assert [e.details["policy"] for e in audit.events if e.action == "crl.stale"] == ["fail-open"]


def test_forged_crl_file_is_ignored_and_alerted(server: MTLSServer, pki: TestPKI, audit: MemoryAudit) -> None:
    """An attacker who can write the CRL file cannot swap in a CRL from another CA (or garbage)."""
    node = pki.leaf("node-1")
    rogue = pki.other_ca()
    saved = pki.issuing
    pki.issuing = rogue
    try:
        pki.write_crl(revoked=[])
    finally:
        pki.issuing = saved
    deadline = time.monotonic() + 5
    while "crl.rejected" not in audit.actions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "crl.rejected" in audit.actions()
    assert request(server.port, client_ctx(pki, node))[0] == 200


def test_websocket_scope_carries_peer(server: MTLSServer, pki: TestPKI) -> None:
    node = pki.leaf("node-1")
    ctx = client_ctx(pki, node)
    with ws_connect(f"wss://localhost:{server.port}/ws", ssl=ctx) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["peer_id"] == peer_id(node.cert)
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"


def test_per_ip_connection_limit(pki: TestPKI, audit: MemoryAudit, caplog: pytest.LogCaptureFixture) -> None:
    """I (DoS): one address cannot hold more than its share of connections, and a refused connection
    leaves no traceback behind (it logged one AttributeError per refusal: a log flood under abuse)."""
    tls = ServerTLS(
        cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl, audit=audit
    )
    node = pki.leaf("node-1")
    with MTLSServer(app=whoami_app, tls=tls, max_connections_per_ip=2) as srv:
        conns = [Conn(srv.port, client_ctx(pki, node)) for _ in range(2)]
        for c in conns:
            assert c.get()[0] == 200
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            Conn(srv.port, client_ctx(pki, node)).get()
        assert any(e.details.get("reason") == "per-IP connection limit" for e in audit.events)
        conns[0].close()
        time.sleep(0.2)
        assert request(srv.port, client_ctx(pki, node))[0] == 200
        conns[1].close()
    assert not [r for r in caplog.records if r.exc_info and r.exc_info[0] is AttributeError]


def test_dev_pki_node_and_gateway_handshake(tmp_path: Path) -> None:
    """The project's dev PKI (cyxwiz.pki.devpki) works on the wire as issued."""
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.devpki import build_dev_pki

    dev = build_dev_pki(tmp_path / "dev", nodes=("node-1",))
    tls = ServerTLS(cert=dev.gateway_cert, key=dev.gateway_key, trust_bundle=dev.bundle, crl=dev.crl)
    ctx = client_context(trust_bundle=dev.bundle, cert=dev.node_cert("node-1"), key=dev.node_key("node-1"))
    with MTLSServer(app=whoami_app, tls=tls) as srv:
        status, body = request(srv.port, ctx)
        assert status == 200
        assert body == {"peer_id": peer_id(load_certificate(dev.node_cert("node-1"))), "role": "worker"}
        dev.revoke(dev.node_cert("node-1"))
        tls.check_now()
        refused(srv.port, ctx)
