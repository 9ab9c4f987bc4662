"""Revocation reaches everything within 5 s, without restart (issue 18; SPEC A6, B4, B5, C1).

A real coordinator and a real gateway over mTLS, sharing the coordinator's records: a ban closes the
node's open websockets and keep-alive connections at both doors; revoked sessions and dead job tokens are
refused at the gateway on the next call; a revoked user certificate kills its refresh family; a rotated
key ring is picked up by the running coordinator and gateway. A positive control beside each.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from cyxwiz.audit import MemorySink
from cyxwiz.coordinator.service import CoordinatorHandle
from cyxwiz.gateway.service import build_gateway
from cyxwiz.gateway.standing import StoreStanding
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.tokens.keyring import DirKeyRingStore
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.server import MTLSServer
from cyxwiz.transport.tls import client_context
from tests._coordinator import start_dev_coordinator
from tests.gateway.conftest import POOL, Upstream, _serve


@dataclass
class Both:
    pki: DevPKI
    coord: CoordinatorHandle
    gateway: MTLSServer
    upstream: Upstream
    audit: MemorySink

    def ctx(self, node: str | None) -> object:
        if node is None:
            return client_context(trust_bundle=self.pki.bundle)
        if node == "user":
            return client_context(
                trust_bundle=self.pki.bundle, cert=self.pki.user_cert, key=self.pki.user_key
            )
        return client_context(
            trust_bundle=self.pki.bundle, cert=self.pki.node_cert(node), key=self.pki.node_key(node)
        )

    def register(self, node: str) -> dict[str, str]:
        with httpx.Client(base_url=self.coord.url, verify=self.ctx(node), timeout=10) as c:  # type: ignore[arg-type]
            r = c.post("/v1/nodes/register", json={"hardware": {"gpus": 1}})
            assert r.status_code == 200, r.text
            return dict(r.json())

    def gw(self, node: str, token: str) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.gateway.url, verify=self.ctx(node), headers=headers, timeout=10)  # type: ignore[arg-type]

    def admin(self, path: str) -> None:
        sid = "admin-session"
        if self.coord.store.is_session_revoked(sid):
            self.coord.store.create_session(session_id=sid, principal_kind="user", principal_id="root")
        token = self.coord.issuer.session(user_id="root", role="admin", session_id=sid).token
        with httpx.Client(base_url=self.coord.url, verify=self.ctx(None), timeout=10) as c:  # type: ignore[arg-type]
            r = c.post(path, json={"reason": "keyCompromise"}, headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text


@pytest.fixture
def both(tmp_path: Path) -> Iterator[Both]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a", "node-b"))
    audit = MemorySink()
    coord = start_dev_coordinator(pki, tmp_path / "state", audit)
    upstream = Upstream()
    up_server, up_port = _serve(upstream.app())

    server, _ = build_gateway(
        cert=pki.gateway_cert, key=pki.gateway_key, trust_bundle=pki.bundle, crl=pki.crl,
        upstream=f"http://127.0.0.1:{up_port}", pool=POOL, verifier=coord.verifier, audit=audit,
        standing=StoreStanding(coord.store), revocation_interval=0.1,
    )  # fmt: skip
    server.start()
    try:
        yield Both(pki, coord, server, upstream, audit)
    finally:
        server.stop()
        coord.stop()
        up_server.should_exit = True


def _events_out(both: Both, node: str, token: str) -> object:
    url = both.gateway.url.replace("https", "wss") + "/api/events/out"
    ws = ws_connect(
        url,
        ssl=both.ctx(node),
        additional_headers={"authorization": f"Bearer {token}"},
        subprotocols=["prefect"],  # type: ignore[arg-type, list-item]
    )
    ws.send(json.dumps({"type": "auth", "token": "x"}))
    assert json.loads(ws.recv(timeout=5))["type"] == "auth_success"
    return ws


def _reasons(both: Both, action: str) -> list[str]:
    return [str(e.details.get("reason")) for e in both.audit.events if e.action == action]


def _closed_within(ws: object, seconds: float) -> float | None:
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            ws.recv(timeout=seconds)  # type: ignore[attr-defined]
    except ConnectionClosed:
        return time.monotonic() - started
    except TimeoutError:
        return None
    return None


def test_ban_cuts_the_node_off_every_channel_within_5s(both: Both) -> None:
    a, b = both.register("node-a"), both.register("node-b")
    ws_a, ws_b = (
        _events_out(both, "node-a", a["session_token"]),
        _events_out(both, "node-b", b["session_token"]),
    )
    keep_a, keep_b = both.gw("node-a", a["session_token"]), both.gw("node-b", b["session_token"])
    assert keep_a.get("/api/admin/version").status_code == 200
    assert keep_b.get("/api/admin/version").status_code == 200
    both.admin(f"/v1/admin/nodes/{a['node_id']}/ban")
    latency = _closed_within(ws_a, 5.0)
    assert latency is not None and latency <= 5.0, "the banned node's websocket stayed open"
    # The keep-alive HTTP connection was closed (audited), and what the client sends next is refused.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "connection closed: node cut off" not in _reasons(
        both, "connection.revoke"
    ):
        time.sleep(0.05)
    assert "connection closed: node cut off" in _reasons(both, "connection.revoke")
    with contextlib.suppress(httpx.TransportError):
        assert keep_a.get("/api/admin/version").status_code in (401, 403)
    # A new connection is refused too: answered 401/403, or aborted by the watcher before it answers.
    with both.gw("node-a", a["session_token"]) as again, contextlib.suppress(httpx.TransportError):
        assert again.get("/api/admin/version").status_code in (401, 403)
    # Positive control: node-b keeps its websocket and its connection.
    assert _closed_within(ws_b, 0.5) is None
    assert keep_b.get("/api/admin/version").status_code == 200
    closed = _reasons(both, "connection.revoke")
    assert "websocket closed: node banned" in closed or "websocket closed: session revoked" in closed
    for closeable in (ws_a, ws_b, keep_a, keep_b):
        closeable.close()  # type: ignore[attr-defined]


def test_revoked_session_refused_at_the_gateway(both: Both) -> None:
    a = both.register("node-a")
    with both.gw("node-a", a["session_token"]) as c:
        assert c.get("/api/admin/version").status_code == 200
        ws = _events_out(both, "node-a", a["session_token"])
        both.coord.store.revoke_session(a["session_id"])  # e.g. refresh-token reuse killed the family
        r = c.get("/api/admin/version")
        assert r.status_code == 401 and r.json()["type"].endswith("token-revoked")
        assert _closed_within(ws, 5.0) is not None
        ws.close()  # type: ignore[attr-defined]


def test_job_token_dead_at_the_gateway_once_the_job_ended(both: Both) -> None:
    a = both.register("node-a")
    job = both.coord.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=60)
    both.coord.store.assign_job(job.job_id, a["node_id"])
    run = both.upstream.add_run(a["node_id"])  # the queue is the node id
    run["parameters"] = {"job_id": job.job_id}
    with httpx.Client(base_url=both.coord.url, verify=both.ctx("node-a"), timeout=10) as c:  # type: ignore[arg-type]
        job_token = c.get(
            f"/v1/jobs/{job.job_id}/token", headers={"authorization": f"Bearer {a['session_token']}"}
        ).json()["job_token"]
    with both.gw("node-a", a["session_token"]) as c:
        c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})
        headers = {"x-cyxwiz-job-token": job_token}
        assert c.get(f"/api/flow_runs/{run['id']}", headers=headers).status_code == 200
        # After the proof (verifying) the run may still finish: set its final state, log.
        both.coord.store.update_job(job.job_id, status="verifying")
        assert c.get(f"/api/flow_runs/{run['id']}", headers=headers).status_code == 200
        both.coord.store.update_job(job.job_id, status="cancelled")  # what revoke_job_token does
        r = c.get(f"/api/flow_runs/{run['id']}", headers=headers)
        assert r.status_code == 403
    assert any(
        "job token is dead: job is cancelled" in str(e.details.get("reason")) for e in both.audit.events
    )


def test_revoked_user_certificate_kills_its_refresh_family(both: Both) -> None:
    with httpx.Client(base_url=both.coord.url, verify=both.ctx("user"), timeout=10) as c:  # type: ignore[arg-type]
        pair = c.post("/v1/auth/login").json()
        first = c.post("/v1/tokens/refresh", json={"refresh_token": pair["refresh_token"]})
        assert first.status_code == 200  # positive control
        refresh = first.json()["refresh_token"]
    both.pki.revoke(both.pki.user_cert)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not both.coord.store.is_session_revoked(pair["session_id"]):
        time.sleep(0.05)
    assert both.coord.store.is_session_revoked(pair["session_id"])
    # Without the certificate (users may come without one) the family is dead all the same.
    with httpx.Client(base_url=both.coord.url, verify=both.ctx(None), timeout=10) as c:  # type: ignore[arg-type]
        r = c.post("/v1/tokens/refresh", json={"refresh_token": refresh})
        assert r.status_code == 401
    assert any(
        e.details.get("reason") == "certificate revoked"
        for e in both.audit.events
        if e.action == "token-family.revoke"
    )


def test_key_ring_rotation_reaches_the_running_coordinator_and_gateway(both: Both, tmp_path: Path) -> None:
    from cyxwiz.coordinator.service import AUDIENCE, ISSUER
    from cyxwiz.tokens.keyring import rotate_if_due
    from cyxwiz.tokens.reload import KeyRingReloader

    ring_dir = tmp_path / "state" / "keyring"
    old_kid = both.coord.issuer.keyring.signing_key.kid
    # A verifier-only process (the gateway's CLI) loads the ring from the directory and follows it.
    ring = DirKeyRingStore(ring_dir).load()
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE)
    reloader = KeyRingReloader(ring=ring, path=ring_dir)
    rotate_if_due(DirKeyRingStore(ring_dir), force=True)  # the scheduled flow, another process
    assert reloader.check_now()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and both.coord.issuer.keyring.signing_key.kid == old_kid:
        time.sleep(0.05)
    new = both.coord.issuer.session(user_id="alice", session_id="s")
    assert new.kid != old_kid, "the running coordinator still signs with the rotated-out key"
    assert verifier.verify(new.token, kind=TokenKind.SESSION).subject == new.subject
    # Rotated-out keys leave the ring once pruned: their tokens stop verifying without restart.
    store = DirKeyRingStore(ring_dir)
    pruned = store.load()
    pruned.prune(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
    store.save(pruned)
    assert reloader.check_now()
    assert ring.lookup(old_kid, now=dt.datetime.now(dt.UTC)) is None


def test_a_cut_off_node_is_every_certificate_it_renewed_from(tmp_path: Path) -> None:
    """Closing a banned node's connections covers its earlier (renewed-from, unexpired) certificates too:
    a keep-alive connection under the certificate before the renewal is the same node (A6, A7)."""
    from cyxwiz.coordinator.store import CoordinatorStore

    store = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'c.db'}")
    node = store.register_node(peer_id="12D3KooWOld", subject="CN=n", cert_serial="1", hardware={})
    other = store.register_node(peer_id="12D3KooWOther", subject="CN=o", cert_serial="3", hardware={})
    store.renew_node(node.node_id, peer_id="12D3KooWNew", cert_serial="2")
    standing = StoreStanding(store)
    assert standing.cut_off_peers() == set()  # positive control: nobody is cut off
    store.set_node_status(node.node_id, "banned")
    assert standing.cut_off_peers() == {"12D3KooWOld", "12D3KooWNew"}
    assert other.peer_id not in standing.cut_off_peers()


def test_a_revoked_issuing_ca_kills_the_refresh_families_of_its_leaves(both: Both) -> None:
    """The root revokes the issuing CA (A6): the sessions of every certificate that CA issued are revoked
    at the coordinator within 5 s, as its leaves' handshakes are refused — a family does not outlive the
    CA of the certificate it was opened with (B5; issue 18 audit list)."""
    from cryptography.hazmat.primitives import serialization

    from cyxwiz.pki.ca import CertificateAuthority
    from cyxwiz.pki.certs import load_certificate

    with httpx.Client(base_url=both.coord.url, verify=both.ctx("user"), timeout=10) as c:  # type: ignore[arg-type]
        pair = c.post("/v1/auth/login").json()
        assert c.post("/v1/tokens/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 200
    assert not both.coord.store.is_session_revoked(pair["session_id"])  # positive control
    root = CertificateAuthority.from_dir(both.pki.root_ca_cert.parent)
    root.revoke(load_certificate(both.pki.ca_cert), reason="keyCompromise")
    root_crl = root.generate_crl(write=False).public_bytes(serialization.Encoding.PEM)
    issuing_crl = both.pki.crl.read_bytes()
    staged = both.pki.crl.with_name(".crl.tmp")
    staged.write_bytes(issuing_crl + root_crl)  # the published CRL file: one CRL per CA
    staged.replace(both.pki.crl)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not both.coord.store.is_session_revoked(pair["session_id"]):
        time.sleep(0.05)
    assert both.coord.store.is_session_revoked(pair["session_id"])
    assert any(
        e.resource == f"token-family:{pair['session_id']}"
        and e.details.get("reason") == "certificate revoked"
        for e in both.audit.events
    )
