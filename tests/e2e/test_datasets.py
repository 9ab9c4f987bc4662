"""Users' own datasets end to end on the embedded stack (issue 16 acceptance; SPEC G1, D3, F1, C2).

One stack (the one ``make demo`` runs) and one moto S3 server; jobs on four datasets — the digits
reference, the shipped wine CSV (``file://`` under an allowed root: the embedded stack is development),
a local file uploaded by ``cyxwiz job submit --dataset``, and an object on the S3 server — each verified and
released, with the report stating where its holdout came from; and a tampered dataset (hash mismatch)
refused before any job row or escrow exists.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cyxwiz.errors import ValidationError
from tests.e2e.lifecycle_conftest import PROJECT, stack, tiny_job, verification_report
from tests.storage.conftest import MotoServer, moto_server

__all__ = ["moto_server", "stack"]  # fixtures imported so pytest sees them here

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


def released(stack: Any, summary: dict[str, Any], holdout: str) -> None:
    from tasks import services

    job_id = summary["job_id"]
    report = verification_report(stack, job_id)
    failed = [f"{c['name']}: {c['reason']}" for c in report["checks"] if not c["passed"]]
    assert summary["verification"]["passed"] is True, failed
    assert str(services.ledger().status(job_id=job_id).state) == "released"
    assert report["summary"]["holdout"] == holdout


def test_tampered_dataset_is_refused_before_escrow(stack: Any, sources: Any) -> None:
    """D3: the S3 object changed after the user hashed it — refused at validation: no row, no escrow."""
    from flows.job_lifecycle import job_lifecycle

    data = breast_cancer_npz()
    sources.put_object(Bucket=BUCKET, Key="cancer.npz", Body=data)
    spec = breast_cancer_job(f"s3://{BUCKET}/cancer.npz", hashlib.sha256(data + b"tampered").hexdigest())
    jobs_before, escrows_before = len(stack.coordinator.store.list_jobs()), escrows()
    with pytest.raises(ValidationError) as caught:
        job_lifecycle(stack.fund(spec), node="node-1")
    assert (caught.value.field, caught.value.rule) == ("dataset.sha256", "D3")
    assert len(stack.coordinator.store.list_jobs()) == jobs_before, "no job row"
    assert escrows() == escrows_before, "no escrow"


def test_s3_object_dataset(stack: Any, sources: Any) -> None:
    from flows.job_lifecycle import job_lifecycle

    data = breast_cancer_npz()
    sources.put_object(Bucket=BUCKET, Key="cancer.npz", Body=data)
    spec = breast_cancer_job(f"s3://{BUCKET}/cancer.npz", hashlib.sha256(data).hexdigest())
    released(stack, job_lifecycle(stack.fund(spec), node="node-1"), "secret-split")


def test_shipped_csv_dataset(stack: Any, sources: Any) -> None:
    from flows.job_lifecycle import job_lifecycle

    spec = yaml.safe_load((PROJECT / "examples" / "wine.yaml").read_text())
    csv = PROJECT / "examples" / "wine.csv"
    spec["dataset"].update(uri=f"file://{csv}", sha256=hashlib.sha256(csv.read_bytes()).hexdigest())
    spec["user"] = "demo-user"
    released(stack, job_lifecycle(stack.fund(spec), node="node-1"), "secret-split")


def test_digits_reference(stack: Any, sources: Any) -> None:
    from flows.job_lifecycle import job_lifecycle

    released(stack, job_lifecycle(stack.fund(tiny_job()), node="node-1"), "public-derived")


def test_local_file_uploaded_by_submit_dataset(stack: Any, sources: Any, tmp_path: Path) -> None:
    """What ``cyxwiz job submit job.yaml --dataset ./data.npz --wallet KEY`` does: upload into the user's
    area through the hash/size-bound PUT, submit with the lock the user's wallet signed; the coordinator
    starts the lifecycle on the control worker; released."""
    from sklearn.datasets import load_digits

    from cyxwiz.jobs.client import CoordinatorUserClient
    from cyxwiz.jobs.spec import with_dataset

    bunch = load_digits()
    buffer = io.BytesIO()
    np.savez(buffer, x=(bunch.data / 16.0).astype(np.float32), y=bunch.target)
    data = tmp_path / "my-digits.npz"
    data.write_bytes(buffer.getvalue())
    spec = copy.deepcopy(tiny_job())
    spec.pop("user")
    spec.pop("dataset")
    stack.start_control_worker()
    try:
        with CoordinatorUserClient.from_options(
            url=stack.coordinator.url,
            cert=stack.pki.user_cert,
            key=stack.pki.user_key,
            ca_bundle=stack.pki.bundle,
            crl=stack.pki.crl,
        ) as client:
            spec = with_dataset(spec, client.upload_dataset(data))
            job = client.submit(spec, wallet=stack.wallet("demo-user"))
            job = client.wait(job["job_id"], timeout_s=600, interval_s=1.0)
    finally:
        stack.stop_agent("__control__")
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    assert job["spec"]["dataset"]["uri"].endswith(f"/users/{job['user_id']}/datasets/{sha}.npz")
    report = verification_report(stack, job["job_id"])
    failed = [f"{c['name']}: {c['reason']}" for c in report["checks"] if not c["passed"]]
    assert job["status"] == "released", (job["status"], failed)
    assert report["summary"]["holdout"] == "secret-split"
