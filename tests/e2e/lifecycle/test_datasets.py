"""Users' own datasets end to end on the embedded stack (issue 16 acceptance; SPEC G1, D3, F1, C2).

The package's stack (the one ``make demo`` runs; conftest.py) and one moto S3 server; jobs on four
datasets — the digits reference, the shipped wine CSV (``file://`` under an allowed root: the embedded stack
is development), a local file uploaded by ``cyxwiz job submit --dataset``, and an object on the S3 server —
each verified and released, with the report stating where its holdout came from; and a tampered dataset
(hash mismatch) refused before any job row or escrow exists.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cyxwiz.errors import AuthorizationError, ValidationError
from cyxwiz.jobs.spec import with_dataset
from cyxwiz.ledger.keystore import read_pubkey
from tests.e2e.lifecycle_conftest import (
    PROJECT,
    audit_events,
    node_id_of,
    tiny_job,
    verification_report,
    wait_until,
)
from tests.jobs.conftest import issue_user
from tests.storage.conftest import MotoServer, moto_server

__all__ = ["moto_server"]  # the fixture, imported so pytest sees it here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.prefect,
    pytest.mark.timeout(900),
]

BUCKET = "user-data"


@pytest.fixture(scope="module")
def sources(stack: Any, moto_server: MotoServer) -> Iterator[Any]:
    """The stack told where datasets may come from: the examples dir (dev file://) and the S3 server."""
    import boto3

    env = {
        "CYXWIZ_DATASET_FILE_ROOTS": str(PROJECT / "examples"),
        "CYXWIZ_DATASET_S3_ENDPOINT_URL": moto_server.endpoint_url,
        "CYXWIZ_DATASET_S3_REGION": moto_server.region,
        "CYXWIZ_DATASET_S3_ACCESS_KEY_ID": moto_server.access_key_id,
        "CYXWIZ_DATASET_S3_SECRET_ACCESS_KEY": moto_server.secret_access_key,
        "CYXWIZ_DATASET_S3_BUCKETS": BUCKET,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    stack.env.update(env)
    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        region_name=moto_server.region,
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def breast_cancer_npz() -> bytes:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = (bunch.data - bunch.data.mean(0)) / bunch.data.std(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=x.astype(np.float32), y=bunch.target)
    return buffer.getvalue()


def breast_cancer_job(uri: str, sha256: str) -> dict[str, Any]:
    return {
        "user": "demo-user",
        "payment": 5_000_000,
        "dataset": {"uri": uri, "sha256": sha256},
        "job_type": "model",
        "model": {
            "input_shape": [30],
            "layers": [
                {"name": "fc1", "type": "Linear", "out_features": 16},
                {"name": "act1", "type": "ReLU"},
                {"name": "fc2", "type": "Linear", "out_features": 2},
            ],
        },
        "training": {
            "seed": 3,
            "checkpoint_every": 10,
            "hyperparameters": {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 32, "epochs": 3},
        },
        "task": {"num_classes": 2, "threshold": 0.85, "tolerance": 0.1},
        "limits": {"memory_mb": 2048, "wall_seconds": 300},
    }


def escrows() -> list[str]:
    from tasks import services

    return sorted(r.job_id for r in services.ledger().list_escrows())


def released(stack: Any, job_id: str, holdout: str) -> str:
    """The job verified, its escrow released, its report naming the holdout's origin; the node it paid."""
    from tasks import services

    report = verification_report(stack, job_id)
    failed = [f"{c['name']}: {c['reason']}" for c in report["checks"] if not c["passed"]]
    record = services.ledger().status(job_id=job_id)
    moved = [e["details"] for e in audit_events(stack) if e.get("action") == "job.redispatch"]
    assert str(record.state) == "released", (job_id, str(record.state), failed, "re-dispatched:", moved)
    assert report["summary"]["holdout"] == holdout, job_id
    return str(record.node_wallet)


def is_sealed_key(path: Path) -> bool:
    from cyxwiz.ledger.keystore import read_pubkey

    try:
        return path.is_file() and bool(read_pubkey(path))
    except Exception:  # not a sealed key file (the config, the intent log, ...)
        return False


def token_supply(stack: Any) -> int:
    """The mint's supply (SPL Mint layout: u64 at offset 36): no token is minted or burnt by a job."""
    from solders.pubkey import Pubkey

    from cyxwiz.ledger.rpc import RpcChain

    chain = RpcChain(url=stack.ledger.config.rpc_url)
    try:
        account = chain.get_account(Pubkey.from_string(stack.ledger.config.mint))
    finally:
        chain.close()
    assert account is not None
    return int.from_bytes(bytes(account.data)[36:44], "little")


def user_client(stack: Any, user: str, certs: dict[str, tuple[Path, Path]]) -> Any:
    from cyxwiz.jobs.client import CoordinatorUserClient

    cert, key = certs[user]
    return CoordinatorUserClient.from_options(
        url=stack.coordinator.url, cert=cert, key=key, ca_bundle=stack.pki.bundle, crl=stack.pki.crl
    )


def user_env(stack: Any, user: str, certs: dict[str, tuple[Path, Path]]) -> dict[str, str]:
    """What a user's shell holds for ``cyxwiz job``: their certificate, their wallet and its passphrase."""
    cert, key = certs[user]
    wallet = stack.wallet(user)
    return {
        **stack.env,
        "CYXWIZ_COORDINATOR_URL": stack.coordinator.url,
        "CYXWIZ_USER_CERT": str(cert),
        "CYXWIZ_USER_KEY": str(key),
        "CYXWIZ_CA_BUNDLE": str(stack.pki.bundle),
        "CYXWIZ_CRL": str(stack.pki.crl),
        "CYXWIZ_WALLET": str(wallet.path),
        "CYXWIZ_WALLET_PASSPHRASE_FILE": str(Path(wallet.path).parent / "wallet.pass"),
    }


def fund_when_waiting(stack: Any, user: str, certs: dict[str, tuple[Path, Path]]) -> str:
    """Bob's shell, as the README says: find his job that waits for funding, then ``cyxwiz job fund JOB``
    signs its lock with his wallet there and hands it in."""
    with user_client(stack, user, certs) as client:
        found = wait_until(
            lambda: [j for j in client.list_jobs() if j["status"] == "awaiting-funding"], timeout=300
        )
    assert found, "the UI-started run opened no job waiting for funding"
    job_id = str(found[0]["job_id"])
    funded = subprocess.run(
        [sys.executable, "-m", "cyxwiz.cli", "job", "fund", job_id, "--json"],
        env=user_env(stack, user, certs), cwd=PROJECT, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert funded.returncode == 0, (funded.stdout[-2000:], funded.stderr[-2000:])
    assert json.loads(funded.stdout)["status"] == "submitted", funded.stdout
    return job_id


def run_logs(flow_run_id: Any) -> list[str]:
    """Every log message of a flow run (and its tasks) on the Prefect server, once the run is over."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def my_digits_npz(path: Path) -> Path:
    """A user's own file: scikit-learn's digits scaled to [0, 1], saved as ``x``/``y`` arrays."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    buffer = io.BytesIO()
    np.savez(buffer, x=(bunch.data / 16.0).astype(np.float32), y=bunch.target)
    path.write_bytes(buffer.getvalue())
    return path


def test_two_users_two_nodes_four_datasets(stack: Any, sources: Any, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment

    from flows.job_lifecycle import job_lifecycle
    from tasks import services

    alice, bob = "demo-user", "user-2"
    certs = {alice: (stack.pki.user_cert, stack.pki.user_key), bob: issue_user(stack.pki, bob)}
    stack.wallet(bob)
    stack.start_agent("node-3")
    stack.wait_for_node("node-3")
    stack.start_control_worker()
    payouts = {stack.node_wallet(n): n for n in ("node-1", "node-3")}
    before, supply = stack.balances(), token_supply(stack)
    cancer = breast_cancer_npz()
    sources.put_object(Bucket=BUCKET, Key="cancer.npz", Body=cancer)

    # D3: the S3 object changed after its owner hashed it: refused at POST /v1/jobs and in the lifecycle,
    # before any job row or escrow exists.
    tampered = breast_cancer_job(f"s3://{BUCKET}/cancer.npz", hashlib.sha256(cancer + b"x").hexdigest())
    rows, escrows_before = len(stack.coordinator.store.list_jobs()), escrows()
    with user_client(stack, bob, certs) as client, pytest.raises(ValidationError) as caught:
        client.submit({k: v for k, v in tampered.items() if k != "user"}, wallet=stack.wallet(bob))
    assert (caught.value.field, caught.value.rule) == ("dataset.sha256", "D3"), caught.value
    with pytest.raises(ValidationError) as caught:
        job_lifecycle(stack.fund({**tampered, "user": bob}), node="node-3")
    assert (caught.value.field, caught.value.rule) == ("dataset.sha256", "D3")
    assert len(stack.coordinator.store.list_jobs()) == rows, "no job row"
    assert escrows() == escrows_before, "no escrow"

    # The shipped CSV, by the README's command in bob's shell; a local file by alice's client; the S3 object
    # from the job-lifecycle deployment's form (as the Prefect UI starts it: no key can sign there), the run
    # waiting for bob's client to sign the lock. Those run on the control worker, the digits reference in
    # this process from Python.
    readme = subprocess.Popen(
        [sys.executable, "-m", "cyxwiz.cli", "job", "submit", "examples/wine.yaml", "--dataset",
         "examples/wine.csv", "--wait", "--timeout", "600", "--json"],
        env=user_env(stack, bob, certs), cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        mine = my_digits_npz(tmp_path / "my-digits.npz")
        local = copy.deepcopy(tiny_job())
        local.pop("user")
        local.pop("dataset")
        with user_client(stack, alice, certs) as client:
            local = with_dataset(local, client.upload_dataset(mine))
            uploaded = client.submit(local, wallet=stack.wallet(alice))["job_id"]
        s3 = breast_cancer_job(f"s3://{BUCKET}/cancer.npz", hashlib.sha256(cancer).hexdigest())
        form = {"spec": {**s3, "user": bob}, "node": "node-3", "await_funding_s": 600}
        ui_run = run_deployment("job-lifecycle/job-lifecycle", parameters=form, timeout=0)
        from_s3 = fund_when_waiting(stack, bob, certs)
        digits = job_lifecycle(stack.fund(tiny_job(user=alice)), node="node-1")["job_id"]
        out, err = readme.communicate(timeout=700)
    finally:
        if readme.poll() is None:
            readme.kill()
            readme.wait()
    assert readme.returncode == 0, (out[-2000:], err[-2000:])
    wine = json.loads(out)["job_id"]
    with user_client(stack, alice, certs) as client:
        client.wait(uploaded, timeout_s=600, interval_s=1.0)
    with user_client(stack, bob, certs) as client:
        client.wait(from_s3, timeout_s=600, interval_s=1.0)
    jobs = {alice: {digits, uploaded}, bob: {wine, from_s3}}
    # The UI-started run's own logs are on the server (what its page in the Prefect UI shows).
    wanted = (f"waits up to 600 s for {bob}", "escrow locked", "verification of", "archived")

    def logged() -> list[str]:  # the worker's process ships its logs in batches: the last may lag
        found = run_logs(ui_run.id)
        return found if all(any(w in m for m in found) for w in wanted) else []

    assert wait_until(logged, timeout=60, interval=1.0), (wanted, run_logs(ui_run.id))

    # Each job verified and released to the wallet of the node that ran it; the report names its holdout.
    paid_to = {
        digits: released(stack, digits, "public-derived"),
        uploaded: released(stack, uploaded, "secret-split"),
        wine: released(stack, wine, "secret-split"),
        from_s3: released(stack, from_s3, "secret-split"),
    }
    assert payouts[paid_to[digits]] == "node-1" and payouts[paid_to[from_s3]] == "node-3"
    store = stack.coordinator.store
    node_names = {node_id_of(stack, name): name for name in ("node-1", "node-3")}
    for job_id, wallet in paid_to.items():
        assert payouts[wallet] == node_names[store.job(job_id).node_id], job_id  # the node that ran it
    sha = hashlib.sha256(mine.read_bytes()).hexdigest()
    assert store.job(uploaded).spec["dataset"]["uri"].endswith(f"/users/{alice}/datasets/{sha}.npz")

    # C2: each user sees their own jobs, escrows and archives, and is refused the other's.
    for user, other in ((alice, bob), (bob, alice)):
        with user_client(stack, user, certs) as client:
            assert {j["job_id"] for j in client.list_jobs()} == jobs[user]
            view = client.wallet()
            assert {e["job_id"] for e in view["escrows"]} == jobs[user]
            assert set(view["wallets"]) == {stack.wallet(user).address}
            archives = {a["job_id"]: a for a in client.archives()}
            assert set(archives) == jobs[user]
            for job_id in jobs[user]:
                names = {o["name"] for o in archives[job_id]["objects"]}
                assert {"verification.json", "settlement.json"} <= names, (job_id, names)
                assert any(n.startswith("outputs/") for n in names), (job_id, names)
            some = sorted(jobs[other])[0]
            for call in (client.get_job, client.archives):
                with pytest.raises(AuthorizationError):
                    call(some)
            dest = tmp_path / f"{user}-report.json"
            with pytest.raises(AuthorizationError):
                client.download_archived(some, "verification.json", dest)
            assert not dest.exists()

    # F1/F2: each node paid once per job into its own wallet, each user charged for theirs, nothing
    # minted, burnt or left in an escrow.
    after = stack.balances()
    amounts = {job_id: services.ledger().status(job_id=job_id).amount for job_id in paid_to}
    for node in ("node-1", "node-3"):
        earned = sum(amounts[j] for j, wallet in paid_to.items() if payouts[wallet] == node)
        assert after[f"node:{node}"] - before[f"node:{node}"] == earned > 0, (node, before, after)
    for user in (alice, bob):
        spent = sum(amounts[j] for j in jobs[user])
        assert before[f"user:{user}"] - after[f"user:{user}"] == spent > 0, (user, before, after)
    wallets = [name for name in before if ":" in name]  # ("user", "node") repeat two of them
    assert sum(after[n] for n in wallets) == sum(before[n] for n in wallets)
    assert token_supply(stack) == supply

    # F1: every lock above was signed by the user's own client; the control plane's ledger holds no user key.
    assert not {"user", "node"} & set(stack.ledger.config.keys), stack.ledger.config.keys
    held = {read_pubkey(f) for f in stack.ledger.config_path.parent.rglob("*") if is_sealed_key(f)}
    assert held and not held & {stack.wallet(u).address for u in (alice, bob)}, held
