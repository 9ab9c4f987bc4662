"""Archives that belong to someone, attacked through the coordinator API (issue 16; SPEC C2, D2, D3).

A real coordinator (mTLS, TLS 1.3) with the production hooks over a local object store with a master key.
``demo-user`` (the dev PKI's user certificate) and ``bob`` each own a settled job whose archive holds an
encrypted model, the verification report and the settlement; the store also holds what is never part of an
archive (inputs, the sealed holdout, a user's dataset area). Every attack sits beside its honest control and
asserts the exact refusal, its audit event, and that nothing was created or leaked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cyxwiz.errors import IntegrityError
from cyxwiz.jobs.client import CoordinatorUserClient
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import LocalObjectStore
from cyxwiz.storage.urlsign import UrlSigner
from tasks.hooks import PrefectHooks
from tests.coordinator.conftest import Env, auth, make_env

ALICE = "demo-user"  # the dev PKI's user certificate: the one the real client logs in with
MODEL = b"weights" * 5000


@dataclass
class Tenants:
    env: Env
    store: LocalObjectStore
    jobs: dict[str, str]

    def get(
        self, user: str, path: str, *, role: str = "user", scopes: list[str] | None = None
    ) -> httpx.Response:
        token = self.env.user_token(user, role=role, scopes=scopes)
        with self.env.client() as c:
            return c.get(path, headers=auth(token))

    def client(self) -> CoordinatorUserClient:
        pki = self.env.pki
        return CoordinatorUserClient(
            url=self.env.coord.url, ca_bundle=pki.bundle, cert=pki.user_cert, key=pki.user_key, crl=pki.crl
        )

    def keys(self) -> list[str]:
        return sorted(info.key for info in self.store.list())


def _settled_job(env: Env, store: LocalObjectStore, user: str) -> str:
    job = env.coord.store.create_job(user_id=user, spec={"job_type": "model"}, duration_s=60)
    env.coord.store.update_job(job.job_id, status="released")
    prefix = f"jobs/{job.job_id}/"
    store.put_bytes(prefix + "outputs/model.safetensors", MODEL + user.encode(), encrypt=True)
    store.put_bytes(prefix + "outputs/metrics.json", json.dumps({"accuracy": 0.9}).encode())
    store.put_bytes(prefix + "verification.json", json.dumps({"job_id": job.job_id, "passed": True}).encode())
    store.put_bytes(prefix + "settlement.json", json.dumps({"state": "released"}).encode())
    store.put_bytes(prefix + "inputs/dataset.npz", b"training rows of " + user.encode())
    store.put_bytes(f"holdout/{job.job_id}/holdout.npz", b"sealed holdout", encrypt=True)
    store.put_bytes(f"users/{user}/datasets/{'a' * 64}.npz", b"the user's own data")
    return job.job_id


@pytest.fixture
def tenants(tmp_path: Path) -> Iterator[Tenants]:
    store = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.generate())
    hooks = PrefectHooks(
        store=store,
        signer=UrlSigner(secret=b"s" * 32, base_url="https://127.0.0.1:1/objects"),
        start_flow_runs=False,
    )
    for env in make_env(tmp_path, hooks=hooks):
        jobs = {user: _settled_job(env, store, user) for user in (ALICE, "bob")}
        yield Tenants(env=env, store=store, jobs=jobs)


ARCHIVE = ["outputs/metrics.json", "outputs/model.safetensors", "settlement.json", "verification.json"]


def test_owner_lists_and_reads_their_archive(tenants: Tenants, tmp_path: Path) -> None:
    """Positive control: the owner sees exactly the archive (no inputs, no holdout) and reads the model
    decrypted, hash-checked, saved 0600."""
    job = tenants.jobs[ALICE]
    with tenants.client() as client:
        listed = client.archives(job)
        assert [o["name"] for o in listed["objects"]] == ARCHIVE
        every = client.archives()
        dest = tmp_path / "model.safetensors"
        sha = client.download_archived(job, "outputs/model.safetensors", dest)
    assert [a["job_id"] for a in every] == [job], "only the caller's own jobs"
    assert dest.read_bytes() == MODEL + ALICE.encode()
    assert sha == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert dest.stat().st_mode & 0o777 == 0o600
    read = tenants.env.audit.of_action("archive.read")
    assert [e.resource for e in read] == [f"job:{job}/outputs/model.safetensors"]


def test_another_users_archive_is_refused(tenants: Tenants) -> None:
    """C2: bob names alice's job — its listing and each of its objects: 403, audited, nothing leaks."""
    job, before = tenants.jobs[ALICE], tenants.keys()
    for path in (
        f"/v1/jobs/{job}/archive",
        f"/v1/jobs/{job}/archive/outputs/model.safetensors",
        f"/v1/jobs/{job}/archive/verification.json",
    ):
        r = tenants.get("bob", path)
        assert r.status_code == 403, (path, r.text)
        assert "weights" not in r.text and "passed" not in r.text
    denied = [e for e in tenants.env.audit.of_action("job.read") if e.outcome == "denied"]
    assert {e.actor_id for e in denied} == {"bob"} and len(denied) == 3
    r = tenants.get("bob", "/v1/archive")
    assert r.status_code == 200
    assert [a["job_id"] for a in r.json()] == [tenants.jobs["bob"]]
    assert job not in r.text
    assert tenants.keys() == before, "nothing created"
    assert not tenants.env.audit.of_action("archive.read")
    r = tenants.get("bob", f"/v1/jobs/{tenants.jobs['bob']}/archive/verification.json")
    assert r.status_code == 200 and r.json()["job_id"] == tenants.jobs["bob"]  # his own: allowed


def test_names_outside_the_archive_are_unreachable(tenants: Tenants) -> None:
    """E5/C2: inputs, the sealed holdout, another job's objects, a user's dataset area and the manifest
    are never reachable by a name, however it is spelled: 404 or 422, never their bytes."""
    job, other = tenants.jobs[ALICE], tenants.jobs["bob"]
    cases = {
        "inputs/dataset.npz": 404,
        "manifest.json": 404,
        "outputs/": 422,
        "outputs/missing.bin": 404,
        "%2e%2e/%2e%2e/holdout/" + job + "/holdout.npz": 422,
        "%2E%2E/" + other + "/outputs/model.safetensors": 422,
        "outputs/%2e%2e/%2e%2e/" + other + "/verification.json": 422,
        "outputs/..%2f..%2f" + other + "/settlement.json": 422,
        "%2e%2e/%2e%2e/users/bob/datasets/" + "a" * 64 + ".npz": 422,
        "outputs/model.safetensors%00.json": 422,
        ".hidden": 422,
    }
    for name, status in cases.items():
        r = tenants.get(ALICE, f"/v1/jobs/{job}/archive/{name}")
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["field"] == "name", name
        assert b"training rows" not in r.content and b"holdout" not in r.content
    r = tenants.get(ALICE, f"/v1/jobs/{job}/archive/settlement.json")
    assert r.status_code == 200 and r.json() == {"state": "released"}  # positive control


def test_a_node_and_a_narrow_admin_are_refused_a_full_admin_is_not(tenants: Tenants) -> None:
    """C1: a node may not read archives, not even of the job it ran (role); an admin needs job:read:all;
    an unknown job is 404."""
    job, env = tenants.jobs[ALICE], tenants.env
    node = env.register("node-a")
    env.coord.store.update_job(job, node_id=node["node_id"])
    with env.client("node-a") as c:
        r = c.get(f"/v1/jobs/{job}/archive/settlement.json", headers=auth(node["session_token"]))
        assert r.status_code == 403 and r.json()["field"] == "role", r.text
        assert c.get(f"/v1/jobs/{job}", headers=auth(node["session_token"])).status_code == 200  # its job
    r = tenants.get("ops", f"/v1/jobs/{job}/archive", role="admin", scopes=["job:read"])
    assert r.status_code == 403, r.text
    r = tenants.get("ops", "/v1/archive", role="admin", scopes=["job:read"])
    assert r.status_code == 403 and r.json()["field"] == "scope", r.text
    r = tenants.get("ops", f"/v1/jobs/{job}/archive", role="admin", scopes=["job:read", "job:read:all"])
    assert r.status_code == 200 and [o["name"] for o in r.json()["objects"]] == ARCHIVE
    r = tenants.get(ALICE, "/v1/jobs/job-" + "0" * 20 + "/archive")
    assert r.status_code == 404, r.text
    r = tenants.get(ALICE, "/v1/jobs/not-a-job/archive")
    assert r.status_code == 422 and r.json()["field"] == "job_id", r.text


def test_a_tampered_archived_object_is_never_delivered_whole(tenants: Tenants, tmp_path: Path) -> None:
    """D3: bytes changed in the store after archiving (same size): the stream stops short of its end and
    the client leaves nothing at the destination."""
    job = tenants.jobs[ALICE]
    body = tenants.store.body_path(f"jobs/{job}/verification.json")
    data = bytearray(body.read_bytes())
    data[-2] ^= 0x01
    body.write_bytes(bytes(data))
    dest = tmp_path / "verification.json"
    with tenants.client() as client, pytest.raises(IntegrityError) as caught:
        client.download_archived(job, "verification.json", dest)
    assert (caught.value.field, caught.value.rule) == ("verification.json", "D3")
    assert not dest.exists() and not list(tmp_path.glob(".verification.json*"))
    with tenants.client() as client:  # positive control: an intact object of the same job
        client.download_archived(job, "settlement.json", tmp_path / "settlement.json")


def test_cli_lists_and_downloads_own_archive_and_refuses_anothers(tenants: Tenants, tmp_path: Path) -> None:
    """``cyxwiz job archive``: the owner's listing and download; bob's job: one error line, exit 3."""
    from typer.testing import CliRunner

    from cyxwiz.cli import app

    pki, env = tenants.env.pki, {"CYXWIZ_DEBUG": None}
    options = ["--coordinator", tenants.env.coord.url, "--ca-bundle", str(pki.bundle), "--crl", str(pki.crl)]
    options += ["--cert", str(pki.user_cert), "--key", str(pki.user_key)]
    listed = CliRunner().invoke(app, ["job", "archive", *options], env=env)
    assert listed.exit_code == 0, listed.output
    assert tenants.jobs[ALICE] in listed.output and "outputs/model.safetensors" in listed.output
    assert tenants.jobs["bob"] not in listed.output
    dest = tmp_path / "m.bin"
    got = CliRunner().invoke(
        app,
        [
            "job",
            "archive",
            tenants.jobs[ALICE],
            "--get",
            "outputs/model.safetensors",
            "-o",
            str(dest),
            *options,
        ],
        env=env,
    )
    assert got.exit_code == 0 and dest.read_bytes() == MODEL + ALICE.encode(), got.output
    refused = CliRunner().invoke(app, ["job", "archive", tenants.jobs["bob"], *options], env=env)
    errors = [line for line in refused.output.splitlines() if line.startswith("error: ")]
    assert refused.exit_code == 3 and len(errors) == 1 and "Traceback" not in refused.output, refused.output
    assert "403" in errors[0] and "[rule C2]" in errors[0]
