"""``cyxwiz job submit --dataset`` and ``POST /v1/jobs`` over real mTLS with the lifecycle's own validator
(SPEC G1, D3, F1, F3, C2): the upload lands in the caller's area through a hash- and size-bound PUT, and
every refusal is the exact status with nothing created — no job row, no stored object."""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cyxwiz.audit import MemorySink
from cyxwiz.cli import app
from cyxwiz.coordinator.service import CoordinatorHandle, build_coordinator
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.storage import LocalObjectStore, MasterKey
from cyxwiz.storage.urlsign import UrlSigner, asgi_app
from cyxwiz.transport.tls import client_context
from infra.demo import REFERENCE_JOB
from tasks.hooks import PrefectHooks
from tests.jobs.conftest import issue_user

MINIMUM = 1000


@dataclass
class Api:
    pki: DevPKI
    coord: CoordinatorHandle
    store: LocalObjectStore
    other: tuple[Path, Path]
    root: Path

    def cli(self, *args: str, who: str = "user") -> Any:
        cert, key = (self.pki.user_cert, self.pki.user_key) if who == "user" else self.other
        env = {
            "CYXWIZ_COORDINATOR_URL": self.coord.url,
            "CYXWIZ_CA_BUNDLE": str(self.pki.bundle),
            "CYXWIZ_USER_CERT": str(cert),
            "CYXWIZ_USER_KEY": str(key),
            "CYXWIZ_DEBUG": None,
        }
        return CliRunner().invoke(app, ["job", *args], env=env)

    def http(self) -> httpx.Client:
        ctx = client_context(trust_bundle=self.pki.bundle, cert=self.pki.user_cert, key=self.pki.user_key)
        return httpx.Client(base_url=self.coord.url, verify=ctx, timeout=30)

    def token(self) -> dict[str, str]:
        with self.http() as c:
            return {"authorization": f"Bearer {c.post('/v1/auth/login').json()['session_token']}"}

    def stored(self) -> list[str]:
        return sorted(i.key for i in self.store.list(""))

    def jobs(self) -> int:
        return len(self.coord.store.list_jobs())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("upload")
    pki = build_dev_pki(root / "pki", nodes=())
    other = issue_user(pki, "other-user")
    master = MasterKey.generate()
    store = LocalObjectStore(root=root / "store", master_key=master)

    class LateSigner:  # the URL is known once the socket is bound
        target: Any = None

        def __getattr__(self, name: str) -> Any:
            return getattr(self.target, name)

    signer = LateSigner()
    hooks = PrefectHooks(store=store, signer=signer, start_flow_runs=False, minimum_payment=MINIMUM)
    coord = build_coordinator(
        cert=pki.coordinator_cert, key=pki.coordinator_key, trust_bundle=pki.bundle, crl=pki.crl,
        state_dir=root / "state", hooks=hooks, audit=MemorySink(), max_body=64 << 20,
    )  # fmt: skip
    signer.target = UrlSigner.from_master_key(master, base_url=f"{coord.url}/objects")
    coord.app.app.mount("/objects", asgi_app(store=store, signer=signer.target, mount="/objects"))  # type: ignore[attr-defined]
    coord.server.start()
    try:
        yield Api(pki=pki, coord=coord, store=store, other=other, root=root)
    finally:
        coord.stop()


def dataset_file(path: Path, *, rows: int = 120, nan: bool = False) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((rows, 64), dtype=np.float32)
    if nan:
        x[5, 5] = np.nan
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=rng.integers(0, 10, rows))
    path.write_bytes(buffer.getvalue())
    return path


def funded(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a job id and a well-formed signed lock: this coordinator has no ledger view, so the
    lock's shape is checked (F1) but not its signature — the funding path has its own tests."""
    import base64
    import secrets

    from solders.keypair import Keypair
    from solders.signature import Signature

    job_id = f"job-{secrets.token_hex(10)}"
    lock = {
        "job_id": job_id,
        "wallet": str(Keypair().pubkey()),
        "message": base64.b64encode(b"lock").decode(),
        "signature": str(Signature.default()),
    }
    return {**spec, "job_id": job_id, "funding": lock}


def job_file(api: Api, name: str, **changes: Any) -> Path:
    spec = funded(copy.deepcopy(REFERENCE_JOB))
    spec.update(changes)
    path = api.root / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_submit_with_dataset_uploads_into_the_users_area_then_submits(api: Api) -> None:
    data = dataset_file(api.root / "mine.npz")
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    result = api.cli("submit", str(job_file(api, "job.yaml", dataset=None)), "--dataset", str(data), "--json")
    assert result.exit_code == 0, result.output
    key = f"users/demo-user/datasets/{sha}.npz"
    assert key in api.stored() and api.store.get_bytes(key) == data.read_bytes()
    (job,) = api.coord.store.list_jobs()
    assert job.spec["dataset"] == {"uri": f"s3://cyxwiz/{key}", "sha256": sha}


def submit(api: Api, dataset: Any, **changes: Any) -> httpx.Response:
    spec = funded({**copy.deepcopy(REFERENCE_JOB), "dataset": dataset, **changes})
    with api.http() as c:
        return c.post("/v1/jobs", json={"spec": spec}, headers=api.token())


@pytest.mark.parametrize(
    ("change", "status", "field", "rule"),
    [
        ({"sha256": "0" * 64}, 422, "dataset.sha256", "D3"),  # tampered / swapped content
        ({"uri": "s3://cyxwiz/users/other-user/datasets/x.npz"}, 403, "dataset.uri", "C2"),
        ({"uri": "s3://cyxwiz/holdout/job-1/holdout.npz"}, 403, "dataset.uri", "C2"),
        ({"uri": "file:///etc/passwd.npz"}, 422, "dataset.uri", "G1"),  # no dev file roots here
        ({"uri": "ftp://x/y.npz"}, 422, "dataset.uri", "G1"),
    ],
)
def test_post_jobs_refuses_bad_datasets_before_any_row(
    api: Api, change: dict[str, str], status: int, field: str, rule: str
) -> None:
    data = dataset_file(api.root / "ok.npz")
    key = f"users/demo-user/datasets/{hashlib.sha256(data.read_bytes()).hexdigest()}.npz"
    api.store.put_bytes(key, data.read_bytes())
    good = {"uri": f"s3://cyxwiz/{key}", "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    before_jobs, before_keys = api.jobs(), api.stored()
    response = submit(api, {**good, **change})
    assert response.status_code == status, response.text
    assert (response.json()["field"], response.json()["rule"]) == (field, rule)
    assert (api.jobs(), api.stored()) == (before_jobs, before_keys), "nothing is created"
    assert submit(api, good).status_code == 201  # positive control


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


_X, _Y = np.zeros((60, 64), np.float32), np.arange(60) % 10
_CSV = "".join(f"{i % 7},{i % 5},{i % 10}\n" for i in range(60))


@pytest.mark.parametrize(
    ("name", "body", "field", "rule"),
    [
        ("shape.npz", _npz(x=np.zeros((60, 32), np.float32), y=_Y), "model.input_shape", "G2"),
        ("labels.npz", _npz(x=_X, y=_Y + 1), "task.num_classes", "G2"),  # 10 is no output of 10 classes
        ("nan.npz", _npz(x=np.where(_X == 0, np.inf, _X), y=_Y), "dataset.x", "G1"),
        ("truncated.npz", _npz(x=_X, y=_Y)[:2000], "dataset", "G1"),
        ("empty.npz", b"", "dataset", "G1"),
        ("pickle.npz", _npz(x=np.array([{"a": 1}] * 60, dtype=object), y=_Y), "dataset", "G1"),
        ("nolabel.csv", "a,b,label\n" + _CSV, "dataset.label_column", "G1"),
        ("ragged.csv", "a,b,target\n" + _CSV + "1,2", "dataset", "G1"),
    ],
)
def test_post_jobs_reads_the_data_and_refuses_bad_content_before_any_row(
    api: Api, name: str, body: bytes | str, field: str, rule: str
) -> None:
    """G1/G2 at the door: the coordinator reads the user's own uploaded file with the lifecycle's validator;
    a bad one is 422 naming field and rule, and no job row exists (nothing else is written)."""
    data = body.encode() if isinstance(body, str) else body
    sha = hashlib.sha256(data).hexdigest()
    key = f"users/demo-user/datasets/{sha}{Path(name).suffix}"
    api.store.put_bytes(key, data)  # as if uploaded (the upload grant itself refuses an empty file)
    ref = {"uri": f"s3://cyxwiz/{key}", "sha256": sha}
    if name.endswith(".csv"):
        ref["label_column"] = "target"
    before_jobs, before_keys = api.jobs(), api.stored()
    response = submit(api, ref)
    assert response.status_code == 422, response.text
    assert (response.json()["field"], response.json()["rule"]) == (field, rule), response.json()
    assert (api.jobs(), api.stored()) == (before_jobs, before_keys), "nothing is created"


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"payment": MINIMUM - 1}, "payment", "F3"),
        ({"task": {"num_classes": 10, "threshold": 0}}, "task.threshold", "F1"),
        ({"job_type": "quantum"}, "job_type", "G1"),
    ],
)
def test_post_jobs_applies_payment_threshold_and_type_rules(
    api: Api, changes: dict[str, Any], field: str, rule: str
) -> None:
    before = api.jobs()
    response = submit(api, "sklearn:digits", **changes)
    assert response.status_code == 422, response.text
    assert (response.json()["field"], response.json()["rule"]) == (field, rule)
    assert api.jobs() == before


def test_cli_refusal_is_one_line_and_creates_nothing(api: Api) -> None:
    data = dataset_file(api.root / "nan.npz", nan=True)
    before_jobs = api.jobs()
    result = api.cli("submit", str(job_file(api, "nan.yaml")), "--dataset", str(data))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: dataset.x: ") and "[rule G1]" in result.output
    assert "Traceback" not in result.output and api.jobs() == before_jobs


def test_upload_grant_is_bound_to_hash_size_and_the_callers_area(api: Api) -> None:
    """The PUT stores exactly the declared bytes under users/{caller}/; too big or empty is refused at the
    grant, another body at the PUT — and nothing is stored either way."""
    body = b"x" * 100
    sha = hashlib.sha256(body).hexdigest()
    headers = api.token()
    with api.http() as c:
        before = api.stored()
        too_big = c.post("/v1/datasets", json={"sha256": sha, "size": 65 << 20}, headers=headers)
        assert too_big.status_code == 422 and too_big.json()["field"] == "size"
        empty = c.post("/v1/datasets", json={"sha256": sha, "size": 0}, headers=headers)
        assert empty.status_code == 422
        grant = c.post("/v1/datasets", json={"sha256": sha, "size": 100, "suffix": ".csv"}, headers=headers)
        assert grant.status_code == 201, grant.text
        upload = grant.json()["upload"]
        assert upload["key"] == f"users/demo-user/datasets/{sha}.csv"
        forged = c.put(upload["url"], content=b"y" * 100, headers=upload["headers"])
        assert forged.status_code == 400, forged.text
        moved = c.put(
            upload["url"].replace("demo-user", "other-user"), content=body, headers=upload["headers"]
        )
        assert moved.status_code == 403
        assert api.stored() == before, "no refused request stored anything"
        assert c.put(upload["url"], content=body, headers=upload["headers"]).status_code == 201
    assert api.store.get_bytes(f"users/demo-user/datasets/{sha}.csv") == body
