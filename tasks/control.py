"""Trusted-side steps of the job lifecycle as plain functions over the core (no Prefect here).

:mod:`tasks.lifecycle_tasks` wraps them as Prefect tasks with retries (only the idempotent ones) and
rollback hooks; tests call them directly.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyxwiz.errors import ValidationError
from tasks.config import ControlPlaneConfig

#: The only dataset source the embedded default prepares itself (scikit-learn ships it: nothing downloads).
DIGITS = "sklearn:digits"


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """What a user submits: the training document (without dataset hash) plus payment and limits."""

    job_id: str
    user: str
    payment: int
    dataset: str
    training_doc: dict[str, Any]
    memory_mb: int
    wall_seconds: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "user": self.user,
            "payment": self.payment,
            "dataset": self.dataset,
            "training_doc": self.training_doc,
            "memory_mb": self.memory_mb,
            "wall_seconds": self.wall_seconds,
        }


def new_job_id() -> str:
    return f"job-{secrets.token_hex(6)}"


def parse_job_request(spec: dict[str, Any], *, job_id: str | None = None) -> JobRequest:
    """Validate a submitted job spec (G1, G2, F3): every problem names its field; nothing is created yet."""
    from cyxwiz.training.spec import parse_training_job

    if not isinstance(spec, dict):
        raise ValidationError("a job spec is a mapping", field="spec", rule="G1")
    allowed = {"job_id", "user", "payment", "dataset", "job_type", "model", "training", "task", "limits"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValidationError(f"unknown keys {unknown}", field="spec", rule="G1")
    job_id = job_id or spec.get("job_id") or new_job_id()
    payment = spec.get("payment")
    if not isinstance(payment, int) or isinstance(payment, bool) or payment <= 0:
        raise ValidationError("must be a positive integer of base units", field="payment", rule="F3")
    user = spec.get("user", "user")
    if not isinstance(user, str) or not user:
        raise ValidationError("must be a non-empty string", field="user")
    dataset = spec.get("dataset", DIGITS)
    if dataset != DIGITS:
        raise ValidationError(
            f"the embedded control plane prepares {DIGITS!r} only", field="dataset", rule="G1"
        )
    limits = spec.get("limits") or {}
    if not isinstance(limits, dict) or set(limits) - {"memory_mb", "wall_seconds"}:
        raise ValidationError("limits takes memory_mb and wall_seconds", field="limits", rule="E2")
    memory_mb = limits.get("memory_mb", 2048)
    wall_seconds = limits.get("wall_seconds", 600)
    for name, value, low, high in (
        ("memory_mb", memory_mb, 128, 65536),
        ("wall_seconds", wall_seconds, 5, 86400),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValidationError(f"must be an integer in [{low}, {high}]", field=f"limits.{name}", rule="E2")
    doc = {
        "job_id": job_id,
        "job_type": spec.get("job_type", "model"),
        "model": spec.get("model"),
        "dataset": {"uri": f"s3://cyxwiz/jobs/{job_id}/inputs/dataset.npz", "sha256": "0" * 64},
        "training": spec.get("training"),
        "task": spec.get("task"),
    }
    parse_training_job(doc)  # full G1/G2 validation now, before any escrow exists
    return JobRequest(
        job_id=job_id,
        user=user,
        payment=payment,
        dataset=dataset,
        training_doc=doc,
        memory_mb=memory_mb,
        wall_seconds=wall_seconds,
    )


@dataclass(frozen=True, kw_only=True)
class PreparedInputs:
    training_doc: dict[str, Any]
    dataset_key: str
    dataset_sha256: str
    holdout_key: str
    holdout_sha256: str


def prepare_inputs(config: ControlPlaneConfig, request: JobRequest) -> PreparedInputs:
    """Split the dataset; the training part becomes the job's input, the holdout stays trusted-side."""
    from cyxwiz.storage import layout
    from cyxwiz.training.data import prepare_digits

    store = open_store(config)
    with tempfile.TemporaryDirectory() as tmp:
        files = prepare_digits(Path(tmp), split_seed=int(request.training_doc["training"]["seed"]))
        dataset_key = layout.job_input(request.job_id, "dataset.npz")
        store.put_file(dataset_key, files.train)
        holdout_key = holdout_key_for(request.job_id)
        store.put_file(holdout_key, files.holdout, encrypt=True)
        doc = json.loads(json.dumps(request.training_doc))
        doc["dataset"]["sha256"] = files.train_sha256
        store.put_bytes(
            layout.job_input(request.job_id, "job.json"), json.dumps(doc, sort_keys=True).encode()
        )
        return PreparedInputs(
            training_doc=doc,
            dataset_key=dataset_key,
            dataset_sha256=files.train_sha256,
            holdout_key=holdout_key,
            holdout_sha256=files.holdout_sha256,
        )


def holdout_key_for(job_id: str) -> str:
    # Outside jobs/{id}/ so no job-scoped URL can ever reach it (G: the node never receives the holdout).
    return f"holdout/{job_id}/holdout.npz"


def open_store(config: ControlPlaneConfig) -> Any:
    from cyxwiz.storage.local import LocalObjectStore

    return LocalObjectStore.from_env({"CYXWIZ_STORE_ROOT": str(config.store_root)} | _store_env())


def _store_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("CYXWIZ_STORE_")}
