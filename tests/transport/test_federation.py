"""A federation of two organizations on real TLS 1.3 over loopback (A7, C1, A6 "beyond").

Nodes of org A (every role) and org B (workers under .orgb.example only) are served; org B's verifier is
refused after the handshake with the policy rule named; revoking org B's issuing CA cuts off org B's live
connections and new handshakes within 5 s while org A's keep working; removing org B from the policy file
does the same. Identity stays the certificate's PeerID.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyxwiz.pki.federation import Federation
from cyxwiz.pki.peerid import peer_id
from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from tests.pki.federation_fixture import FederationWorld, Node, make_org, make_world
from tests.transport.conftest import Conn, MemoryAudit, request, whoami_app

DEADLINE_S = 5.0


def ctx(bundle: Path, node: Node) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(bundle))
    context.load_cert_chain(str(node.cert_path), str(node.key_path))
    return context


def reasons(audit: MemoryAudit) -> list[str]:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        found = [str(e.details.get("reason")) for e in audit.events if e.action == "certificate.verify"]
        if found:
            return found
        time.sleep(0.02)
    return []


@pytest.fixture
def world(tmp_path: Path) -> FederationWorld:
    return make_world(tmp_path)


@pytest.fixture
def served(world: FederationWorld, audit: MemoryAudit) -> Iterator[tuple[MTLSServer, Path]]:
    gateway = world.a.node("gateway", role="gateway", server=True, dns=("localhost",))
    federation = Federation(policy_path=world.policy_path)
    bundle = federation.write_bundle(world.base / "federation-bundle.pem")
    tls = ServerTLS(
        cert=gateway.cert_path,
        key=gateway.key_path,
        trust_bundle=bundle,
        crl=None,
        policy=federation,
        audit=audit,
        poll_interval=0.1,
    )
    with MTLSServer(app=whoami_app, tls=tls) as server:
        yield server, bundle


def wait_closed(conn: Conn, keep: Conn) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE_S:
        assert keep.get()[0] == 200  # the other organization's node is served throughout
        try:
            conn.get()
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_two_orgs_served_org_b_verifier_refused_with_the_rule(
    served: tuple[MTLSServer, Path], world: FederationWorld, audit: MemoryAudit
) -> None:
    server, bundle = served
    a_verifier = world.a.node("a-verifier", role="verifier")
    b_worker = world.b.node("w1.orgb.example", role="worker")
    for node, role in ((a_verifier, "verifier"), (b_worker, "worker")):
        status, body = request(server.port, ctx(bundle, node))
        assert status == 200 and body == {"peer_id": peer_id(node.cert), "role": role}
    b_verifier = world.b.node("v1.orgb.example", role="verifier")  # org B certifies a verifier
    with pytest.raises((ConnectionError, ssl.SSLError)):
        request(server.port, ctx(bundle, b_verifier))
    assert any("rule A7/role" in r and "'orgb'" in r for r in reasons(audit))


def test_revoking_org_b_intermediate_cuts_only_org_b_within_5s(
    served: tuple[MTLSServer, Path], world: FederationWorld
) -> None:
    server, bundle = served
    a_node, b_node = world.a.node("a-worker", role="worker"), world.b.node("w1.orgb.example", role="worker")
    b_conn, a_conn = Conn(server.port, ctx(bundle, b_node)), Conn(server.port, ctx(bundle, a_node))
    try:
        assert b_conn.get()[0] == 200 and a_conn.get()[0] == 200
        world.b.root.revoke(world.b.issuing.certificate, reason="keyCompromise")
        world.b.write_crls()
        latency = wait_closed(b_conn, a_conn)
        assert latency is not None, f"org B still served {DEADLINE_S} s after its CA was revoked"
        print(f"federation revocation latency: {latency:.3f}s")
        with pytest.raises((ConnectionError, ssl.SSLError)):
            request(server.port, ctx(bundle, b_node))
        assert request(server.port, ctx(bundle, a_node))[0] == 200
    finally:
        b_conn.close()
        a_conn.close()


def test_org_removed_from_the_policy_at_run_time(
    served: tuple[MTLSServer, Path], world: FederationWorld, audit: MemoryAudit
) -> None:
    server, bundle = served
    a_node, b_node = world.a.node("a-worker", role="worker"), world.b.node("w1.orgb.example", role="worker")
    b_conn, a_conn = Conn(server.port, ctx(bundle, b_node)), Conn(server.port, ctx(bundle, a_node))
    try:
        assert b_conn.get()[0] == 200
        world.write_policy(orgs=("orga",))
        assert wait_closed(b_conn, a_conn) is not None
        with pytest.raises((ConnectionError, ssl.SSLError)):
            request(server.port, ctx(bundle, b_node))
        assert request(server.port, ctx(bundle, a_node))[0] == 200
        world.policy_path.write_text(
            "version: 1\norganizations: ["
        )  # a broken edit: alert, last policy stays
        deadline = time.monotonic() + DEADLINE_S
        while "trust-policy.rejected" not in audit.actions() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "trust-policy.rejected" in audit.actions()
        assert request(server.port, ctx(bundle, a_node))[0] == 200
    finally:
        b_conn.close()
        a_conn.close()


def test_org_added_to_the_policy_at_run_time(
    served: tuple[MTLSServer, Path], world: FederationWorld, audit: MemoryAudit
) -> None:
    """A7: a new organization is served without a restart (its CAs join OpenSSL's trust store), within
    its roles; removing it again refuses it. Org A is served throughout (positive control)."""
    server, bundle = served
    orgc = make_org(world.base, "orgc")
    world.extra["orgc"] = orgc
    c_worker = orgc.node("w1.orgc.example", role="worker")
    c_verifier = orgc.node("v1.orgc.example", role="verifier")
    a_node = world.a.node("a-worker", role="worker")
    both = world.base / "a-and-c.pem"
    both.write_bytes(bundle.read_bytes() + orgc.bundle_path.read_bytes())  # the client trusts the server
    with pytest.raises((ConnectionError, ssl.SSLError)):
        request(server.port, ctx(both, c_worker))  # not in the policy yet: unknown CA at the handshake

    world.write_policy(extra=("orgc",))
    served_at = wait_served(server.port, ctx(both, c_worker))
    assert served_at is not None, f"org C not served {DEADLINE_S} s after it was added to the policy"
    status, body = request(server.port, ctx(both, c_worker))
    assert status == 200 and body == {"peer_id": peer_id(c_worker.cert), "role": "worker"}
    with pytest.raises((ConnectionError, ssl.SSLError)):
        request(server.port, ctx(both, c_verifier))  # within its roles only
    assert any("rule A7/role" in r and "'orgc'" in r for r in reasons(audit))
    assert request(server.port, ctx(bundle, a_node))[0] == 200

    c_conn, a_conn = Conn(server.port, ctx(both, c_worker)), Conn(server.port, ctx(bundle, a_node))
    try:
        assert c_conn.get()[0] == 200
        world.write_policy()  # org C removed again: live connection cut, new handshakes refused
        assert wait_closed(c_conn, a_conn) is not None
        with pytest.raises((ConnectionError, ssl.SSLError)):
            request(server.port, ctx(both, c_worker))
        assert request(server.port, ctx(bundle, a_node))[0] == 200
    finally:
        c_conn.close()
        a_conn.close()


def wait_served(port: int, context: ssl.SSLContext) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE_S:
        try:
            if request(port, context)[0] == 200:
                return time.monotonic() - started
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        time.sleep(0.1)
    return None


def test_a_crl_pushed_by_the_control_plane_ca_under_a_policy(
    served: tuple[MTLSServer, Path], world: FederationWorld, audit: MemoryAudit
) -> None:
    """The coordinator's admin revoke pushes its CA's CRL to its listeners (A6). Under a trust policy the
    listener has no single CRL: the push closes the named peer's live connection at once and nothing
    else (no error, no CRL taking over); new handshakes follow org A's published CRL file."""
    from cryptography.hazmat.primitives.serialization import Encoding

    server, bundle = served
    revoked, kept = world.a.node("a-revoked", role="worker"), world.a.node("a-kept", role="worker")
    b_node = world.b.node("w1.orgb.example", role="worker")
    conns = {
        n: Conn(server.port, ctx(bundle, node)) for n, node in (("r", revoked), ("k", kept), ("b", b_node))
    }
    try:
        assert all(c.get()[0] == 200 for c in conns.values())
        world.a.issuing.revoke(revoked.cert, reason="keyCompromise")
        server.tls.apply_crl(world.a.issuing.generate_crl().public_bytes(Encoding.PEM))
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            conns["r"].get()
        assert conns["k"].get()[0] == 200 and conns["b"].get()[0] == 200  # nobody else
        assert "certificate.revoke" in audit.actions()
        world.a.write_crls()  # org A publishes: new handshakes of the revoked node are refused too
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                request(server.port, ctx(bundle, revoked))
            except (ConnectionError, ssl.SSLError, OSError):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the revoked node's new handshakes still accepted after org A published its CRL")
        assert request(server.port, ctx(bundle, kept))[0] == 200
    finally:
        for conn in conns.values():
            conn.close()
