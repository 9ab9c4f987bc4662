"""A node lost mid-job keeps nothing of the job once it is re-dispatched (issue 21; SPEC C2, C3, F1).

A real coordinator (mTLS, TLS 1.3) with the production hooks and the local object store served under its
``/objects`` mount. Job J runs on node A: A holds J's job token and a presigned PUT for J's model. J is then
re-dispatched to node B (the store's atomic claim, as ``tasks/redispatch.py`` does). A comes back and tries
every node-facing path that names J with what it still holds: progress, completion (the proof), new URLs,
a new job token, its old presigned PUT. Each is refused 403 with an Authorization audit event naming why,
and nothing is written; beside each, B's honest call with its own credentials succeeds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from cyxwiz.audit import MemorySink
from cyxwiz.coordinator.service import CoordinatorHandle, build_coordinator
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from cyxwiz.storage import LocalObjectStore, MasterKey
from cyxwiz.storage.urlsign import UrlSigner, asgi_app
from cyxwiz.transport.tls import client_context
from cyxwiz.verification.proof import CheckpointSummary, CompletionProof, sign_proof
from tasks.hooks import PrefectHooks

MODEL_A, MODEL_B = b"A's stale weights" * 100, b"B's weights" * 100
KEY = "model.safetensors"
INPUT = {"kind": "input", "name": "dataset.npz", "method": "GET"}


@dataclass
class World:
    pki: DevPKI
    coord: CoordinatorHandle
    objects: LocalObjectStore
    audit: MemorySink
    nodes: dict[str, dict[str, Any]]
    job_id: str

    def client(self, node: str) -> httpx.Client:
        ctx = client_context(
            trust_bundle=self.pki.bundle, cert=self.pki.node_cert(node), key=self.pki.node_key(node)
        )
        return httpx.Client(base_url=self.coord.url, verify=ctx, timeout=10)

    def call(self, node: str, path: str, body: dict[str, Any], token: str) -> httpx.Response:
        with self.client(node) as c:
            return c.post(f"/v1/jobs/{self.job_id}/{path}", json=body, headers=_auth(token))

    def job_token(self, node: str) -> httpx.Response:
        with self.client(node) as c:
            return c.get(f"/v1/jobs/{self.job_id}/token", headers=_auth(self.nodes[node]["session_token"]))

    def put(self, node: str, presigned: dict[str, Any], data: bytes) -> httpx.Response:
        # The URL names the coordinator's mount; only its path and query matter here (the port is the test's).
        parts = urlsplit(presigned["url"])
        with self.client(node) as c:
            return c.put(f"{parts.path}?{parts.query}", content=data, headers=presigned.get("headers") or {})

    def get(self, node: str, presigned: dict[str, Any]) -> httpx.Response:
        parts = urlsplit(presigned["url"])
        with self.client(node) as c:
            return c.get(f"{parts.path}?{parts.query}")

    def refusals(self) -> list[str]:
        return [
            str(e.details.get("reason", ""))
            for e in self.audit.events
            if e.outcome.value != "success" and e.event_type.value == "Authorization"
        ]


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _url_body(data: bytes) -> dict[str, Any]:
    return {"kind": "output", "name": KEY, "method": "PUT", "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a", "node-b"))
    objects = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.generate())
    signer = UrlSigner(secret=b"u" * 32, base_url="https://127.0.0.1:1/objects")
    audit = MemorySink()
    hooks = PrefectHooks(store=objects, signer=signer, start_flow_runs=False)
    coord = build_coordinator(
        cert=pki.coordinator_cert, key=pki.coordinator_key, trust_bundle=pki.bundle, crl=pki.crl,
        state_dir=tmp_path / "state", audit=audit, hooks=hooks, max_body=64 << 20,
    )  # fmt: skip
    coord.app.app.mount("/objects", asgi_app(store=objects, signer=signer, mount="/objects"))  # type: ignore[attr-defined]
    coord.server.start()
    try:
        nodes = {}
        for name in ("node-a", "node-b"):
            ctx = client_context(trust_bundle=pki.bundle, cert=pki.node_cert(name), key=pki.node_key(name))
            with httpx.Client(base_url=coord.url, verify=ctx, timeout=10) as c:
                r = c.post("/v1/nodes/register", json={"hardware": {"gpus": 1}})
                assert r.status_code == 200, r.text
                nodes[name] = r.json()
        job = coord.store.create_job(user_id="alice", spec={"job_type": "model"}, duration_s=600)
        coord.store.claim_job(job.job_id, candidates=[nodes["node-a"]["node_id"]])
        yield World(pki=pki, coord=coord, objects=objects, audit=audit, nodes=nodes, job_id=job.job_id)
    finally:
        coord.stop()


def _proof(world: World, node: str, token: str) -> dict[str, Any]:
    cert = load_certificate(world.pki.node_cert(node))
    claims = world.coord.verifier.verify(token, kind=_job_kind(), peer_cert=cert)
    proof = CompletionProof(
        job_id=world.job_id, job_spec_sha256="1" * 64, node_peer_id=peer_id(cert),
        cert_fingerprint_sha256="2" * 64, token_jti=claims.jti,
        artifacts={KEY: hashlib.sha256(MODEL_B).hexdigest()}, metrics={"accuracy": 0.9},
        checkpoints=CheckpointSummary(merkle_root="3" * 64, count=0),
        started_at="2026-11-30T06:00:00Z", finished_at="2026-11-30T06:10:00Z",
    )  # fmt: skip
    key = load_private_key(world.pki.node_key(node))
    return {"proof": json.loads(sign_proof(proof, key).to_json())}  # type: ignore[arg-type]


def _job_kind() -> Any:
    from cyxwiz.tokens.kinds import TokenKind

    return TokenKind.JOB


def _redispatch(world: World) -> None:
    a, b = world.nodes["node-a"]["node_id"], world.nodes["node-b"]["node_id"]
    before = world.coord.store.job(world.job_id).assignment
    moved = world.coord.store.claim_job(world.job_id, candidates=[a, b], exclude=[a])
    assert moved.node_id == b and moved.assignment != before


def _model_key(world: World) -> str:
    return f"jobs/{world.job_id}/outputs/{KEY}"


def test_a_reassigned_nodes_job_token_reaches_nothing_and_the_new_node_works(world: World) -> None:
    r = world.job_token("node-a")
    assert r.status_code == 200
    token_a = r.json()["job_token"]
    assert world.call("node-a", "progress", {"step": 1, "total": 10}, token_a).status_code == 200  # control
    _redispatch(world)
    token_b = world.job_token("node-b").json()["job_token"]
    progress = world.coord.store.job(world.job_id).progress

    # Attacks: A's token on every job path, and a fresh token for a job that is no longer A's.
    for path, body in (
        ("progress", {"step": 9, "total": 10, "metrics": {"accuracy": 0.99}}),
        ("urls", _url_body(MODEL_A)),
        ("urls", {"kind": "input", "name": "dataset.npz"}),
        ("completion", _proof(world, "node-a", token_a)),
    ):
        r = world.call("node-a", path, body, token_a)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["field"] == "job_id"
    assert world.job_token("node-a").status_code == 403
    reasons = world.refusals()
    assert sum("re-assigned to another node" in r for r in reasons) >= 4, reasons
    assert any("job is not assigned to this node" in r for r in reasons)
    job = world.coord.store.job(world.job_id)
    assert job.progress == progress and job.proof is None and job.status == "running"
    assert not list(world.objects.list(f"jobs/{world.job_id}/"))

    # Positive controls: B's own token does each of these.
    assert world.call("node-b", "progress", {"step": 2, "total": 10}, token_b).status_code == 200
    url = world.call("node-b", "urls", _url_body(MODEL_B), token_b)
    assert url.status_code == 200, url.text
    assert world.put("node-b", url.json()["url"], MODEL_B).status_code == 201
    done = world.call("node-b", "completion", _proof(world, "node-b", token_b), token_b)
    assert done.status_code == 200 and done.json()["status"] == "verifying", done.text


def test_a_presigned_url_issued_before_the_redispatch_is_refused_at_use(world: World) -> None:
    world.objects.put_bytes(f"jobs/{world.job_id}/inputs/dataset.npz", b"the user's rows")
    token_a = world.job_token("node-a").json()["job_token"]
    stale = world.call("node-a", "urls", _url_body(MODEL_A), token_a)
    assert stale.status_code == 200
    stale_get = world.call("node-a", "urls", INPUT, token_a).json()["url"]
    _redispatch(world)
    token_b = world.job_token("node-b").json()["job_token"]
    fresh = world.call("node-b", "urls", _url_body(MODEL_B), token_b).json()["url"]

    # The input: B's own GET URL reads it (control); A's stale one is refused, the bytes never leave.
    fresh_get = world.call("node-b", "urls", INPUT, token_b).json()["url"]
    assert world.get("node-b", fresh_get).content == b"the user's rows"
    refused = world.get("node-a", stale_get)
    assert refused.status_code == 403 and b"rows" not in refused.content

    # Positive control: B's URL stores B's model.
    assert world.put("node-b", fresh, MODEL_B).status_code == 201
    # Attack: A's URL (signature valid, not expired, the job still open) would overwrite it.
    r = world.put("node-a", stale.json()["url"], MODEL_A)
    assert r.status_code == 403, r.text
    assert r.json()["rule"] == "C3"
    assert world.objects.get_bytes(_model_key(world)) == MODEL_B, "B's upload is untouched"
    assert any("URL is dead: the job was re-assigned" in reason for reason in world.refusals())


def test_a_presigned_put_of_a_settled_job_is_refused(world: World) -> None:
    """The same rule when the job ends: every URL issued for it is revoked with it."""
    token_a = world.job_token("node-a").json()["job_token"]
    url = world.call("node-a", "urls", _url_body(MODEL_A), token_a).json()["url"]
    world.coord.store.update_job(world.job_id, status="cancelled")  # revoke_job_token
    r = world.put("node-a", url, MODEL_A)
    assert r.status_code == 403
    assert not list(world.objects.list(f"jobs/{world.job_id}/"))
