"""Job tokens die with their job, outputs freeze at the proof, sessions stay as narrow as they were opened,
and every read or heartbeat needs its scope (issue 18; SPEC B1, B5, C1, C3, D3)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.coordinator.conftest import Env, auth
from tests.coordinator.test_api import denied, submit_assigned_job

OUTPUT_PUT = {"kind": "output", "name": "model.safetensors", "method": "PUT", "sha256": "0" * 64, "size": 1}


def _job_token(env: Env, node: dict[str, Any], job_id: str) -> str:
    with env.client("node-a") as c:
        r = c.get(f"/v1/jobs/{job_id}/token", headers=auth(node["session_token"]))
        assert r.status_code == 200, r.text
        return str(r.json()["job_token"])


@pytest.mark.parametrize("ended", ["verifying", "completed", "released", "refunded", "cancelled", "failed"])
def test_job_token_is_dead_once_its_job_left_the_node(env: Env, ended: str) -> None:
    """After the proof (verifying), release, refund or revoke_job_token (cancelled) the token gets nothing:
    no presigned PUT to overwrite the delivered model, no progress, no second completion."""
    a = env.register("node-a")
    job_id = submit_assigned_job(env, a["node_id"])
    token = _job_token(env, a, job_id)
    with env.client("node-a") as c:
        # Positive control: while the job runs, the same token gets an input URL (none configured → 404).
        r = c.post(f"/v1/jobs/{job_id}/urls", json={"kind": "input", "name": "data.npz"}, headers=auth(token))
        assert r.status_code == 404 and r.json()["field"] == "name"
        env.coord.store.update_job(job_id, status=ended)
        for path, body in (
            ("urls", OUTPUT_PUT),
            ("urls", {"kind": "input", "name": "data.npz"}),
            ("progress", {"step": 2, "total": 10}),
            ("completion", {"proof": {}}),
        ):
            r = c.post(f"/v1/jobs/{job_id}/{path}", json=body, headers=auth(token))
            assert r.status_code == 403, (path, r.text)
            assert r.json()["rule"] == "C2"
        # And no new job token either.
        assert c.get(f"/v1/jobs/{job_id}/token", headers=auth(a["session_token"])).status_code == 403
    assert denied(env, f"job token is dead: job is {ended}")


def test_outputs_freeze_when_the_proof_is_submitted(env: Env) -> None:
    a = env.register("node-a")
    job_id = submit_assigned_job(env, a["node_id"])
    token = _job_token(env, a, job_id)
    with env.client("node-a") as c:
        proof = {"proof": {"job_id": job_id}}
        assert c.post(f"/v1/jobs/{job_id}/completion", json=proof, headers=auth(token)).status_code == 200
        r = c.post(f"/v1/jobs/{job_id}/urls", json=OUTPUT_PUT, headers=auth(token))
        assert r.status_code == 403
    assert denied(env, "job token is dead: job is completed")


def test_refresh_keeps_the_narrowed_scopes(env: Env) -> None:
    """A read-only session refreshed stays read-only (it used to come back with the role's defaults)."""
    store, issuer = env.coord.store, env.coord.issuer
    store.create_session(session_id="s-narrow", principal_kind="user", principal_id="alice")
    refresh = issuer.refresh(session_id="s-narrow", user_id="alice", role="user", scopes=["job:read"])
    store.add_refresh(jti=refresh.jti, session_id="s-narrow", expires_at=refresh.expires_at)
    with env.client() as c:
        r = c.post("/v1/tokens/refresh", json={"refresh_token": refresh.token})
        assert r.status_code == 200, r.text
        pair = r.json()
        session = env.coord.verifier.verify(pair["session_token"], kind=_kind("session"))
        assert session.scopes == frozenset({"job:read"})
        assert c.get("/v1/jobs", headers=auth(pair["session_token"])).status_code == 200
        r = c.post("/v1/jobs", json={"spec": {"job_type": "train"}}, headers=auth(pair["session_token"]))
        assert r.status_code == 403 and r.json()["field"] == "scope"
        # And again: the rotated refresh token keeps the narrowing too.
        again = c.post("/v1/tokens/refresh", json={"refresh_token": pair["refresh_token"]}).json()
        assert env.coord.verifier.verify(again["session_token"], kind=_kind("session")).scopes == {"job:read"}
    # Positive control: a family opened with the defaults keeps the defaults.
    a = env.register("node-a")
    with env.client("node-a") as c:
        pair = c.post("/v1/tokens/refresh", json={"refresh_token": a["refresh_token"]}).json()
        assert c.post("/v1/nodes/heartbeat", json={}, headers=auth(pair["session_token"])).status_code == 200


def test_reads_and_heartbeats_need_their_scope(env: Env) -> None:
    a = env.register("node-a")
    job_id = submit_assigned_job(env, a["node_id"])
    cert = _cert(env, "node-a")
    bare = env.coord.issuer.session(
        node_id=a["node_id"], role="node", session_id=a["session_id"], cert=cert, scopes=["payment:claim"]
    ).token
    with env.client("node-a") as c:
        for method, path in (
            ("POST", "/v1/nodes/heartbeat"),
            ("GET", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job_id}"),
        ):
            r = c.request(method, path, json={} if method == "POST" else None, headers=auth(bare))
            assert r.status_code == 403 and r.json()["field"] == "scope", path
            ok = c.request(
                method, path, json={} if method == "POST" else None, headers=auth(a["session_token"])
            )
            assert ok.status_code == 200, path
    alice = env.user_token("alice", scopes=["job:submit"])
    with env.client() as c:
        assert c.get("/v1/jobs", headers=auth(alice)).status_code == 403
        assert c.get("/v1/wallet", headers=auth(alice)).status_code == 403


def _kind(name: str) -> Any:
    from cyxwiz.tokens.kinds import TokenKind

    return TokenKind(name)


def _cert(env: Env, node: str) -> Any:
    from cyxwiz.pki.certs import load_certificate

    return load_certificate(env.pki.node_cert(node))


def test_ids_must_be_canonical_before_any_decision(env: Env) -> None:
    """Fail closed on identifiers (issue 18): a respelled job or node id names nothing and is refused (422),
    never matched loosely; the canonical one works."""
    a = env.register("node-a")
    job_id = submit_assigned_job(env, a["node_id"], owner="alice")
    alice, admin = env.user_token("alice"), env.user_token("root", role="admin")
    with env.client() as c:
        assert c.get(f"/v1/jobs/{job_id}", headers=auth(alice)).status_code == 200
        for spelled in (job_id.upper(), job_id + " ", f"{job_id}%00", "job-../x"):
            r = c.get(f"/v1/jobs/{spelled}", headers=auth(alice))
            assert r.status_code in (404, 422), spelled
            if r.status_code == 422:
                assert r.json()["field"] == "job_id"
        r = c.post(f"/v1/admin/nodes/{a['node_id'].upper()}/drain", json={}, headers=auth(admin))
        assert r.status_code == 422 and r.json()["field"] == "node_id"
        assert (
            c.post(f"/v1/admin/nodes/{a['node_id']}/drain", json={}, headers=auth(admin)).status_code == 200
        )
