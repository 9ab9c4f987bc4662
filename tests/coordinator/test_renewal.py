"""Node certificates renew themselves over the node's current mTLS identity (issue 18; SPEC A7, A5, C2).

Attacks beside each positive control: a renewal under another name, with the same key, with a key already
certified, from a banned node, from a revoked certificate, without the node's session token.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.coordinator.tables import node_certs
from cyxwiz.issuer.revocation import MAX_EARLIER
from cyxwiz.ledger.payout import SignedRenewalLink
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import Role, load_certificate
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from cyxwiz.transport.tls import client_context
from tests.coordinator.conftest import Env, auth, make_env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path, node_cert_lifetime=dt.timedelta(seconds=60))


def _csr(key: ed25519.Ed25519PrivateKey, cn: str) -> str:
    return create_csr(key, common_name=cn).public_bytes(serialization.Encoding.PEM).decode()


def _renewal(env: Env, node: str, key: ed25519.Ed25519PrivateKey, *, cn: str | None = None) -> dict[str, Any]:
    """What the agent sends: the CSR and the link its current key signs to the new key (issue 17)."""
    old = load_private_key(env.pki.node_key(node))
    link = SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(key))
    return {"csr": _csr(key, cn or node), "renewal_link": link.to_dict()}


def _client_with(env: Env, tmp_path: Path, cert_pem: str, key: ed25519.Ed25519PrivateKey) -> httpx.Client:
    cert_path, key_path = tmp_path / "renewed-cert.pem", tmp_path / "renewed-key.pem"
    cert_path.write_text(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    ctx = client_context(trust_bundle=env.pki.bundle, cert=cert_path, key=key_path)
    return httpx.Client(base_url=env.coord.url, verify=ctx, timeout=10)


def test_renewal_gives_a_short_lived_certificate_and_keeps_the_old_one_working(
    env: Env, tmp_path: Path
) -> None:
    a = env.register("node-a")
    key = ed25519.Ed25519PrivateKey.generate()
    with env.client("node-a") as c:
        r = c.post("/v1/nodes/renew", json=_renewal(env, "node-a", key), headers=auth(a["session_token"]))
        assert r.status_code == 200, r.text
        renewed = r.json()
    cert = x509.load_pem_x509_certificate(renewed["certificate"].encode())
    assert renewed["node_id"] == a["node_id"] and renewed["peer_id"] == peer_id(cert) != a["peer_id"]
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=30) < left <= dt.timedelta(seconds=61)  # the configured short lifetime
    cert.verify_directly_issued_by(load_certificate(env.pki.ca_cert))
    # The coordinator keeps both certificates as the node's: verification reads them there (A7, F1).
    kept = env.coord.store.node_certificates(a["node_id"])
    assert [c.peer_id for c in kept] == [a["peer_id"], renewed["peer_id"]]
    assert kept[1].pem == renewed["certificate"] and kept[0].pem == env.pki.node_cert("node-a").read_text()
    # The new identity works with the session bound to it: same node.
    with _client_with(env, tmp_path, renewed["certificate"], key) as new:
        hb = new.post("/v1/nodes/heartbeat", json={}, headers=auth(renewed["session_token"]))
        assert hb.status_code == 200 and hb.json()["node_id"] == a["node_id"]
        # The old session is bound to the old certificate, not to the new one.
        assert new.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"])).status_code == 401
    # Jobs in flight on the old certificate are not dropped: it stays the node's until it expires.
    with env.client("node-a") as old:
        assert old.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"])).status_code == 200
    # Registering again under the earlier certificate is the same node (one identity, not a second
    # node holding the renewed-from PeerID), and the renewed certificate stays current (C2, A7).
    again = env.register("node-a")
    assert again["node_id"] == a["node_id"]
    assert env.coord.store.node(a["node_id"]).peer_id == renewed["peer_id"]
    assert [n.node_id for n in env.coord.store.list_nodes()] == [a["node_id"]]
    assert env.audit.of_action("certificate.renew")


def test_renewal_attacks(env: Env) -> None:
    a, b = env.register("node-a"), env.register("node-b")
    key = ed25519.Ed25519PrivateKey.generate()
    with env.client("node-a") as c:
        # Under another node's name (C2): refused.
        r = c.post(
            "/v1/nodes/renew",
            json=_renewal(env, "node-a", key, cn="node-b"),
            headers=auth(a["session_token"]),
        )
        assert r.status_code == 403 and r.json()["field"] == "csr"
        # Garbage: refused and named.
        r = c.post("/v1/nodes/renew", json={"csr": "not a csr"}, headers=auth(a["session_token"]))
        assert r.status_code == 422 and r.json()["field"] == "csr"
        # No session token: the certificate alone does not renew.
        assert c.post("/v1/nodes/renew", json=_renewal(env, "node-a", key)).status_code == 401
        # Node B's session token over node A's certificate: the binding refuses it.
        r = c.post("/v1/nodes/renew", json=_renewal(env, "node-a", key), headers=auth(b["session_token"]))
        assert r.status_code == 401
        # Positive control, then the same key again: a key is certified once.
        ok = c.post("/v1/nodes/renew", json=_renewal(env, "node-a", key), headers=auth(a["session_token"]))
        assert ok.status_code == 200
        again = c.post("/v1/nodes/renew", json=_renewal(env, "node-a", key), headers=auth(a["session_token"]))
        assert again.status_code == 409
    # The same key as the current certificate: not a renewal.
    current_key = serialization.load_pem_private_key(env.pki.node_key("node-b").read_bytes(), None)
    assert isinstance(current_key, ed25519.Ed25519PrivateKey)
    with env.client("node-b") as c:
        r = c.post(
            "/v1/nodes/renew", json=_renewal(env, "node-b", current_key), headers=auth(b["session_token"])
        )
        assert r.status_code == 422


def test_banned_or_revoked_node_cannot_renew(env: Env) -> None:
    a, b = env.register("node-a"), env.register("node-b")
    env.coord.store.set_node_status(a["node_id"], "banned")
    with env.client("node-a") as c:
        body = _renewal(env, "node-a", ed25519.Ed25519PrivateKey.generate())
        assert c.post("/v1/nodes/renew", json=body, headers=auth(a["session_token"])).status_code == 403
    env.pki.revoke(env.pki.node_cert("node-b"))
    env.coord.tls.check_now()
    with pytest.raises(httpx.TransportError), env.client("node-b") as c:
        body = _renewal(env, "node-b", ed25519.Ed25519PrivateKey.generate())
        c.post("/v1/nodes/renew", json=body, headers=auth(b["session_token"]))


def test_admin_revoke_takes_the_earlier_certificates_too(env: Env, tmp_path: Path) -> None:
    """A renewed node revoked by an admin: its current and its earlier (still unexpired) certificate both
    stop completing handshakes — an old key cannot outlive the node's revocation."""
    a = env.register("node-a")
    key = ed25519.Ed25519PrivateKey.generate()
    with env.client("node-a") as c:
        renewed = c.post(
            "/v1/nodes/renew", json=_renewal(env, "node-a", key), headers=auth(a["session_token"])
        ).json()
    admin = env.user_token("root", role="admin")
    with env.client() as c:
        r = c.post(
            f"/v1/admin/nodes/{a['node_id']}/revoke", json={"reason": "keyCompromise"}, headers=auth(admin)
        )
        assert r.status_code == 200
    with pytest.raises(httpx.TransportError), env.client("node-a") as old:
        old.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"]))
    with pytest.raises(httpx.TransportError), _client_with(env, tmp_path, renewed["certificate"], key) as new:
        new.post("/v1/nodes/heartbeat", json={}, headers=auth(renewed["session_token"]))


def test_admin_revoke_of_a_long_lived_node_sends_only_its_unexpired_certificates(env: Env) -> None:
    """A node renewed for weeks holds dozens of expired certificates (refused at the handshake anyway): the
    issuer is sent its current and its unexpired earlier ones, within its bound, and revokes those."""
    a = env.register("node-a")
    ca, store = env.pki.issuing_ca(), env.coord.store
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = [
        ca.issue(common_name="node-a", role=Role.WORKER, days=1, not_before=past).certificate
        for _ in range(MAX_EARLIER + 1)
    ]
    current = ca.issue(common_name="node-a", role=Role.WORKER, days=1).certificate
    for cert in [*expired, current]:  # what each renewal leaves in the store
        store.renew_node(
            a["node_id"], peer_id=peer_id(cert), cert_serial=format(cert.serial_number, "x"), certificate=cert
        )
    admin = env.user_token("root", role="admin")
    with env.client() as c:
        r = c.post(
            f"/v1/admin/nodes/{a['node_id']}/revoke", json={"reason": "keyCompromise"}, headers=auth(admin)
        )
        assert r.status_code == 200, r.text
    revoked = {e.serial for e in ca.revocations()}
    assert revoked == {current.serial_number, load_certificate(env.pki.node_cert("node-a")).serial_number}


def test_admin_revoke_of_a_node_with_no_certificate_on_record_is_named(env: Env) -> None:
    """The issuer revokes only certificates it is shown, never a bare serial (issue 17, A6): for a node row
    that predates the kept certificates the coordinator has none to show, so the revoke is refused with
    where to do it instead, and the node and the CRL stay as they were (nothing half-done)."""
    a = env.register("node-a")
    with env.coord.store.engine.begin() as conn:
        conn.execute(node_certs.delete())
    admin = env.user_token("root", role="admin")
    with env.client() as c:
        r = c.post(
            f"/v1/admin/nodes/{a['node_id']}/revoke", json={"reason": "keyCompromise"}, headers=auth(admin)
        )
    body = r.json()
    assert (r.status_code, body["field"], body["rule"]) == (409, "certificate", "A6"), body
    assert "certutil revoke" in body["detail"]
    assert env.coord.store.node(a["node_id"]).status == "active" and env.pki.issuing_ca().revocations() == []


def test_a_node_registered_before_certificates_were_kept_gets_its_own_on_heartbeat(env: Env) -> None:
    """Upgrade path: a node row with no kept certificate (and an agent that does not register again,
    ``--queue``) gets the certificate it authenticates with on its next heartbeat; verification finds it."""
    a = env.register("node-a")
    store = env.coord.store
    with store.engine.begin() as conn:  # what a coordinator that predates the table holds
        conn.execute(node_certs.delete())
    assert store.node_certificates(a["node_id"]) == []
    with env.client("node-a") as c:
        assert c.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"])).status_code == 200
    assert [k.peer_id for k in store.node_certificates(a["node_id"])] == [a["peer_id"]]
    # Another node's certificate is never kept under this node (positive control above).
    b = env.register("node-b")
    assert not store.record_certificate(a["node_id"], load_certificate(env.pki.node_cert("node-b")))
    assert [k.peer_id for k in store.node_certificates(a["node_id"])] == [a["peer_id"]]
    assert [k.peer_id for k in store.node_certificates(b["node_id"])] == [b["peer_id"]]
