"""Coverage of issue 19 (H2): presigned URLs issued and used, admin actions, key rotation and the
verification verdict are audit events; archives are encrypted and verified after upload (H3)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from cyxwiz.audit import MemorySink, ObjectStoreArchive, events
from cyxwiz.errors import AuditError, IntegrityError
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import LocalObjectStore
from cyxwiz.storage.urlsign import UrlSigner, asgi_app


def _call(app: Any, method: str, url: str, body: bytes = b"") -> int:
    """Drive the ASGI app once (as uvicorn would) and return the response status."""
    parts = urlsplit(url)
    scope = {
        "type": "http",
        "method": method,
        "path": parts.path,
        "query_string": parts.query.encode(),
        "client": ("10.9.8.7", 4444),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


def test_presigned_url_use_is_audited_served_and_refused(tmp_path: Path) -> None:
    master = MasterKey.generate()
    store = LocalObjectStore(root=tmp_path / "store", master_key=master)
    store.put_bytes("jobs/j1/inputs/data.npz", b"payload")
    signer = UrlSigner.from_master_key(master, base_url="http://127.0.0.1/objects")
    sink = MemorySink()
    app = asgi_app(store=store, signer=signer, mount="/objects", audit=sink)
    good = signer.sign("GET", "jobs/j1/inputs/data.npz").url
    assert _call(app, "GET", good) == 200  # positive control
    query = dict(parse_qsl(urlsplit(good).query))
    tampered = good.replace(query["sig"], query["sig"][:-2] + "AA")
    assert _call(app, "GET", tampered) >= 400
    used = sink.of_action("object.presigned_use")
    assert [e.outcome.value for e in used] == ["success", "denied"]
    assert used[0].resource == "object:jobs/j1/inputs/data.npz" and used[0].ip_address == "10.9.8.7"
    assert "signature does not match" in str(used[1].details["reason"])
    assert query["sig"] not in str(used[1].model_dump())  # the credential itself is never logged


def test_presigned_url_issue_and_admin_actions_are_audited(tmp_path: Path) -> None:
    from tests.coordinator.conftest import auth, make_env
    from tests.coordinator.test_api import submit_assigned_job

    class PresigningStore:
        """The one store method the coordinator's BasicHooks needs (a real S3/local presigner elsewhere)."""

        def presign_url(self, key: str, *, method: str, expires_in: int) -> str:
            return f"https://objects.invalid/{key}?exp={expires_in}"

    from cyxwiz.coordinator.hooks import BasicHooks

    env_iter = make_env(tmp_path, hooks=BasicHooks(store=PresigningStore()))
    env = next(env_iter)
    try:
        node = env.register("node-a")
        job_id = submit_assigned_job(env, node["node_id"])
        admin = env.user_token("root", role="admin")
        with env.client("node-a") as cn:
            token = cn.get(f"/v1/jobs/{job_id}/token", headers=auth(node["session_token"])).json()[
                "job_token"
            ]
            r = cn.post(
                f"/v1/jobs/{job_id}/urls", json={"kind": "input", "name": "data.npz"}, headers=auth(token)
            )
            assert r.status_code == 200, r.text
        with env.client() as c:
            assert c.get("/v1/admin/jobs", headers=auth(admin)).status_code == 200
            assert c.get("/v1/admin/config", headers=auth(admin)).status_code == 200
            assert (
                c.post(f"/v1/admin/nodes/{node['node_id']}/drain", json={}, headers=auth(admin)).status_code
                == 200
            )
            # attack: a user calling an admin route is refused and no admin action is recorded for it
            assert c.get("/v1/admin/jobs", headers=auth(env.user_token("alice"))).status_code == 403
    finally:
        env_iter.close()
    issued = env.audit.of_action("object.presign")
    assert (
        len(issued) == 1 and issued[0].details["job_id"] == job_id and "https" not in str(issued[0].details)
    )
    actions = {e.action: e for e in env.audit.events if e.action.startswith("admin.")}
    assert {"admin.jobs.list", "admin.config.read", "admin.node.drain"} <= set(actions)
    assert all(e.actor_id == "root" for e in actions.values())


def test_verdict_and_rotation_events() -> None:
    verdict = events.verification_outcome(
        job_id="j1", passed=False, failed_checks=["replay: segment 3 diverged"], checks=["replay", "holdout"]
    )
    assert verdict.outcome.value == "failure" and verdict.action == "job.verify"
    assert verdict.details["failed_checks"] == ["replay: segment 3 diverged"]
    rotated = events.key_rotation(kind="token-signing-key", new_id="k2", retired=["k0"])
    assert rotated.action == "key.rotate" and rotated.resource == "token-signing-key:k2"
    assert events.key_rotation(kind="certificate", new_id="42").action == "certificate.rotate"


def test_archive_is_encrypted_and_verified_after_upload(tmp_path: Path) -> None:
    store = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.generate())
    day = tmp_path / "audit-2026-11-20.jsonl.gz"
    day.write_bytes(b"\x1f\x8b" + b"x" * 100)
    archive = ObjectStoreArchive(store=store)
    archive.put_file("audit/2026-11-20.jsonl.gz", day)
    assert archive.exists("audit/2026-11-20.jsonl.gz")
    assert store.head("audit/2026-11-20.jsonl.gz").encrypted

    class Corrupting(LocalObjectStore):
        """A store that loses the upload's integrity (bit rot, a hostile bucket): check() fails."""

        def check(self, key: str) -> Any:
            raise IntegrityError("stored bytes do not match their hash", path=key)

    bad = ObjectStoreArchive(store=Corrupting(root=tmp_path / "bad", master_key=MasterKey.generate()))
    with pytest.raises(AuditError, match="fails verification"):
        bad.put_file("audit/2026-11-20.jsonl.gz", day)


def test_closed_days_archive_to_s3_encrypted_verified_and_prune_with_a_signed_marker(
    tmp_path: Path, moto_server: Any
) -> None:
    """H3: the S3 store the control plane is configured with (moto's real S3 API on loopback)."""
    from datetime import UTC, datetime

    from cyxwiz.audit import AuditLog
    from cyxwiz.audit.verify import verify_log
    from tests.audit.conftest import TEST_KEY, ManualClock, sample_event
    from tests.storage.conftest import make_s3_store

    store = make_s3_store(moto_server, "cyxwiz-audit-archive", MasterKey.generate())
    clock = ManualClock(datetime(2026, 11, 20, 10, tzinfo=UTC))
    log_dir = tmp_path / "audit"
    with AuditLog.open(
        log_dir,
        signing_key=TEST_KEY,
        clock=clock,
        archive=ObjectStoreArchive(store=store),
        auto_maintain=False,
    ) as log:
        for _ in range(9):
            log.record(sample_event(1, at=clock.now))
            clock.advance(days=1)
        log.record(sample_event(2, at=clock.now))
        report = log.maintain()
    assert report.archived and report.pruned  # the oldest days left the disk only after the S3 copy checked
    head = store.head("audit/2026-11-20.jsonl.gz")
    assert head.encrypted
    assert (log_dir / "audit-2026-11-20.pruned.json").exists()
    assert verify_log(log_dir, public_key=TEST_KEY.public_key()).ok
