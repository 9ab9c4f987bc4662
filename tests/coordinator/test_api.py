"""Coordinator API attack tests over real mTLS (SPEC B, C1–C3, I, H2): each refusal has its exact status
and an audit record."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.peerid import peer_id
from tests.coordinator.conftest import Env, auth, make_env


def denied(env: Env, reason_part: str) -> bool:
    return any(
        reason_part in str(e.details.get("reason", ""))
        for e in env.audit.events
        if e.outcome.value != "success"
    )


def submit_assigned_job(env: Env, node_id: str, owner: str = "alice") -> str:
    with env.client() as c:
        r = c.post(
            "/v1/jobs",
            json={"spec": {"job_type": "train", "limits": {"wall_time_s": 60}}},
            headers=auth(env.user_token(owner)),
        )
        assert r.status_code == 201, r.text
        job_id = str(r.json()["job_id"])
    env.coord.store.assign_job(job_id, node_id)  # what the Prefect dispatch flow does
    return job_id


def test_register_identity_comes_from_certificate(env: Env) -> None:
    first = env.register("node-a")
    assert first["peer_id"] == peer_id(load_certificate(env.pki.node_cert("node-a")))
    again = env.register("node-a")
    assert again["node_id"] == first["node_id"]
    assert env.audit.of_action("node.register")


def test_register_without_client_certificate_is_401(env: Env) -> None:
    with env.client(None) as c:
        r = c.post("/v1/nodes/register", json={"hardware": {}})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["rule"] == "D1"
    assert denied(env, "client certificate is required")


def test_user_certificate_cannot_register_as_node(env: Env) -> None:
    with env.client("user") as c:
        r = c.post("/v1/nodes/register", json={"hardware": {}})
    assert r.status_code == 403


def test_node_a_posting_as_node_b_is_refused(env: Env) -> None:
    a, b = env.register("node-a"), env.register("node-b")
    with env.client("node-a") as c:
        r = c.post("/v1/nodes/register", json={"hardware": {}, "node_id": b["node_id"]})
        assert r.status_code == 403 and r.json()["field"] == "node_id"
        r = c.post("/v1/nodes/heartbeat", json={"node_id": b["node_id"]}, headers=auth(a["session_token"]))
        assert r.status_code == 403
        ok = c.post("/v1/nodes/heartbeat", json={"node_id": a["node_id"]}, headers=auth(a["session_token"]))
        assert ok.status_code == 200 and ok.json()["drain"] is False
    assert len(env.audit.of_action("impersonate")) == 2


def test_stolen_session_token_useless_with_another_cert(env: Env) -> None:
    a = env.register("node-a")
    env.register("node-b")
    with env.client("node-b") as c:
        r = c.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"]))
    assert r.status_code == 401 and r.json()["type"].endswith("token-binding")


def test_token_of_the_wrong_kind_is_401(env: Env) -> None:
    a = env.register("node-a")
    with env.client("node-a") as c:
        r = c.post("/v1/nodes/heartbeat", json={}, headers=auth(a["refresh_token"]))
        assert r.status_code == 401
        r = c.post("/v1/nodes/heartbeat", json={}, headers={"authorization": "Bearer not-a-jwt"})
        assert r.status_code == 401
        r = c.post("/v1/nodes/heartbeat", json={})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_user_token_on_node_endpoint_is_403(env: Env) -> None:
    with env.client("node-a") as c:
        r = c.post("/v1/nodes/heartbeat", json={}, headers=auth(env.user_token("alice")))
    assert r.status_code == 403


def test_job_token_only_for_the_assigned_node(env: Env) -> None:
    a, b = env.register("node-a"), env.register("node-b")
    job_id = submit_assigned_job(env, a["node_id"])
    with env.client("node-b") as cb:
        r = cb.get(f"/v1/jobs/{job_id}/token", headers=auth(b["session_token"]))
        assert r.status_code == 403
    assert denied(env, "job is not assigned to this node")
    with env.client("node-a") as ca:
        r = ca.get(f"/v1/jobs/{job_id}/token", headers=auth(a["session_token"]))
        assert r.status_code == 200
        job_token = r.json()["job_token"]
        r = ca.post(
            f"/v1/jobs/{job_id}/progress",
            json={"step": 1, "total": 10, "metrics": {"loss": 0.5}},
            headers=auth(job_token),
        )
        assert r.status_code == 200
        # A session token is not a job token (kinds never mix, B1).
        r = ca.post(
            f"/v1/jobs/{job_id}/progress", json={"step": 1, "total": 10}, headers=auth(a["session_token"])
        )
        assert r.status_code == 401
    # Node B with A's job token: the token is bound to A's certificate.
    with env.client("node-b") as cb:
        r = cb.post(
            f"/v1/jobs/{job_id}/urls", json={"kind": "input", "name": "data.npz"}, headers=auth(job_token)
        )
        assert r.status_code == 401


def test_presigned_url_only_for_own_job(env: Env) -> None:
    a, b = env.register("node-a"), env.register("node-b")
    job_a = submit_assigned_job(env, a["node_id"])
    job_b = submit_assigned_job(env, b["node_id"])
    with env.client("node-b") as cb:
        token_b = cb.get(f"/v1/jobs/{job_b}/token", headers=auth(b["session_token"])).json()["job_token"]
        r = cb.post(
            f"/v1/jobs/{job_a}/urls", json={"kind": "input", "name": "data.npz"}, headers=auth(token_b)
        )
        assert r.status_code == 403
        r = cb.post(f"/v1/jobs/{job_b}/urls", json={"kind": "input", "name": "../x"}, headers=auth(token_b))
        assert r.status_code == 422
        r = cb.post(
            f"/v1/jobs/{job_b}/urls",
            json={"kind": "input", "name": "a", "method": "PUT"},
            headers=auth(token_b),
        )
        assert r.status_code == 403
    assert denied(env, "job token is for another job or node")


def test_user_cannot_read_another_users_job(env: Env) -> None:
    a = env.register("node-a")
    job_id = submit_assigned_job(env, a["node_id"], owner="alice")
    with env.client() as c:
        assert c.get(f"/v1/jobs/{job_id}", headers=auth(env.user_token("alice"))).status_code == 200
        r = c.get(f"/v1/jobs/{job_id}", headers=auth(env.user_token("mallory")))
        assert r.status_code == 403
        assert c.get("/v1/jobs", headers=auth(env.user_token("mallory"))).json() == []
        admin = env.user_token("root", role="admin")
        assert c.get(f"/v1/jobs/{job_id}", headers=auth(admin)).status_code == 200
    assert denied(env, "job belongs to someone else")


def test_user_login_with_certificate_and_wallet(env: Env) -> None:
    with env.client("user") as c:
        tokens = c.post("/v1/auth/login").json()
        r = c.get("/v1/wallet", headers=auth(tokens["session_token"]))
    assert r.status_code == 200 and r.json()["user_id"]


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "malformed-json"),
        (b'{"spec": {"job_type": "train"}, "admin": true}', 422, "unknown-field"),
        (b'{"spec": {"job_type": ""}}', 422, "validation"),
        (b"x" * (2 << 20), 413, "body-too-large"),
    ],
)
def test_bad_bodies(env: Env, content: bytes, status: int, code: str) -> None:
    with env.client() as c:
        r = c.post(
            "/v1/jobs",
            content=content,
            headers={**auth(env.user_token("alice")), "content-type": "application/json"},
        )
    assert r.status_code == status, r.text
    assert r.json()["type"] == f"urn:cyxwiz:problem:{code}"
    assert any(code in str(e.details.get("reason", "")) for e in env.audit.events)


def test_flood_from_one_identity_is_throttled_while_another_is_served(tmp_path: Path) -> None:
    for env in make_env(tmp_path, identity_rate=(0.5, 5)):
        noisy, quiet = env.user_token("noisy"), env.user_token("quiet")
        with env.client() as c:
            codes = [c.get("/v1/jobs", headers=auth(noisy)).status_code for _ in range(8)]
            assert codes[:5] == [200] * 5 and 429 in codes[5:]
            assert c.get("/v1/jobs", headers=auth(quiet)).status_code == 200
        assert denied(env, "429 rate-limited")


def test_ip_flood_is_throttled(tmp_path: Path) -> None:
    for env in make_env(tmp_path, ip_rate=(0.5, 3)):
        with env.client() as c:
            codes = [c.get("/v1/health").status_code for _ in range(5)]
        assert codes[:3] == [200] * 3 and codes[-1] == 429


def test_refresh_rotation_and_reuse_kills_the_family(env: Env) -> None:
    a = env.register("node-a")
    with env.client("node-a") as c:
        r = c.post("/v1/tokens/refresh", json={"refresh_token": a["refresh_token"]})
        assert r.status_code == 200
        rotated = r.json()
        assert (
            c.post("/v1/nodes/heartbeat", json={}, headers=auth(rotated["session_token"])).status_code == 200
        )
        # The old refresh token again: reuse → 401 and the whole session family dies.
        r = c.post("/v1/tokens/refresh", json={"refresh_token": a["refresh_token"]})
        assert r.status_code == 401 and r.json()["type"].endswith("token-refresh-reuse")
        assert (
            c.post("/v1/nodes/heartbeat", json={}, headers=auth(rotated["session_token"])).status_code == 401
        )
    assert env.audit.of_action("token-family.revoke")


def test_admin_revoke_kills_sessions_and_connections(env: Env) -> None:
    a = env.register("node-a")
    admin = env.user_token("root", role="admin")
    node_client = env.client("node-a")
    assert (
        node_client.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"])).status_code == 200
    )
    with env.client() as c:
        started = time.monotonic()
        r = c.post(
            f"/v1/admin/nodes/{a['node_id']}/revoke", json={"reason": "keyCompromise"}, headers=auth(admin)
        )
        assert r.status_code == 200 and r.json()["status"] == "revoked"
        nodes = c.get("/v1/admin/nodes", headers=auth(admin)).json()
        assert nodes[0]["status"] == "revoked"
        # A user (not admin) may not do this.
        r = c.post(f"/v1/admin/nodes/{a['node_id']}/ban", json={}, headers=auth(env.user_token("alice")))
        assert r.status_code == 403
    with pytest.raises(httpx.TransportError):
        node_client.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"]))
    assert time.monotonic() - started < 5
    node_client.close()
    assert env.audit.of_action("node.revoke")


def test_drain_and_config_change_audited(env: Env) -> None:
    a = env.register("node-a")
    admin = env.user_token("root", role="admin")
    with env.client() as c:
        assert (
            c.post(f"/v1/admin/nodes/{a['node_id']}/drain", json={}, headers=auth(admin)).status_code == 200
        )
        r = c.put("/v1/admin/config/min_payment_lamports", json={"value": 5000}, headers=auth(admin))
        assert r.json() == {"key": "min_payment_lamports", "old": None, "new": 5000}
        r = c.put("/v1/admin/config/min_payment_lamports", json={"value": 7000}, headers=auth(admin))
        assert r.json()["old"] == 5000
    with env.client("node-a") as n:
        assert (
            n.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"])).json()["drain"] is True
        )
    changes = [e for e in env.audit.of_action("config.change") if e.resource == "config:min_payment_lamports"]
    assert changes[-1].details["changes"] == {"value": {"old": 5000, "new": 7000}}
    assert changes[-1].actor_id == "root"


def test_openapi_lists_the_api(env: Env) -> None:
    spec = env.coord.app.app.openapi()
    assert "/v1/nodes/register" in spec["paths"] and "/v1/admin/config/{key}" in spec["paths"]


def test_only_the_owner_disputes_and_only_inside_the_window(env: Env) -> None:
    """Issue 20 (F1, C2): POST /v1/jobs/{id}/dispute while the release is held. Attacks: another user,
    the assigned node, a late dispute, a second dispute, malformed evidence; positive control: the owner."""
    import datetime as dt

    from cyxwiz.coordinator.holds import HoldBook

    a = env.register("node-a")
    job_id = submit_assigned_job(env, a["node_id"], owner="alice")
    late_job = submit_assigned_job(env, a["node_id"], owner="alice")
    book = HoldBook(env.coord.store.engine)
    now = dt.datetime.now(dt.UTC)
    for job, closes in ((job_id, now + dt.timedelta(minutes=5)), (late_job, now - dt.timedelta(seconds=1))):
        book.hold(job_id=job, user_id="alice", node_wallet="W", attestation="{}", closes_at=closes)
    evidence = {"kind": "segment", "segment_start": 4, "reason": "does not reproduce"}
    path = f"/v1/jobs/{job_id}/dispute"
    with env.client() as c:
        assert c.post(path, json=evidence, headers=auth(env.user_token("mallory"))).status_code == 403
        with env.client("node-a") as node:  # the assigned node, with its own certificate-bound session
            assert node.post(path, json=evidence, headers=auth(a["session_token"])).status_code == 403
        admin = env.user_token("root", role="admin")
        assert c.post(path, json=evidence, headers=auth(admin)).status_code == 403
        bad = c.post(
            path, json={"kind": "segment", "segment_start": 4, "x": 1}, headers=auth(env.user_token("alice"))
        )
        assert bad.status_code == 422
        # F1, payment fraud by a user: a test set picked after delivery is no evidence (any model misses
        # some rows); refused with the rule named and audited, the release stays held.
        picked = {"kind": "testset", "testset_sha256": "a" * 64}
        testset = c.post(path, json=picked, headers=auth(env.user_token("alice")))
        assert testset.status_code == 422 and "no evidence" in testset.text
        assert "evidence.kind" in testset.text
        assert book.get(job_id).state == "held", "no refused call changed the hold"
        late = c.post(f"/v1/jobs/{late_job}/dispute", json=evidence, headers=auth(env.user_token("alice")))
        assert late.status_code == 409 and "window closed" in late.text
        ok = c.post(path, json=evidence, headers=auth(env.user_token("alice")))
        assert ok.status_code == 200, ok.text
        assert ok.json()["state"] == "disputed" and ok.json()["evidence"]["segment_start"] == 4
        assert "attestation" not in ok.json()
        again = c.post(path, json=evidence, headers=auth(env.user_token("alice")))
        assert again.status_code == 409
    assert book.get(late_job).state == "held"
    filed = [e for e in env.audit.events if e.action == "escrow.dispute-filed"]
    outcomes = [e.outcome.value for e in filed if e.resource == f"job:{job_id}"]
    assert outcomes == ["failure", "success", "failure"]  # the test set, the owner, the second dispute
    assert denied(env, "job belongs to someone else")
