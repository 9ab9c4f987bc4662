"""Trusted-side steps of the job lifecycle as plain functions over the core (no Prefect here).

:mod:`tasks.lifecycle_tasks` wraps them as Prefect tasks with retries (only the idempotent ones) and
rollback hooks; tests call them directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cyxwiz.errors import PaymentTooLowError, ValidationError
from cyxwiz.ids import JOB_ID, new_job_id
from tasks.config import ControlPlaneConfig

if TYPE_CHECKING:
    from cyxwiz.datasets import DatasetSources, DatasetSpec, ModelShape
    from cyxwiz.datasets.prepare import CheckedData
    from cyxwiz.ledger.client_funding import Funding
    from cyxwiz.storage.base import BaseObjectStore
    from tasks.channel import ControlChannel

#: The reference dataset (scikit-learn ships it: nothing downloads); the demo default.
DIGITS = "sklearn:digits"


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """What a user submits: the training document (without dataset hash) plus payment and limits."""

    job_id: str
    user: str
    payment: int
    #: The job's data as :func:`cyxwiz.datasets.parse_dataset` normalised it (``sklearn:digits`` or a ref).
    dataset: str | dict[str, Any]
    training_doc: dict[str, Any]
    memory_mb: int
    wall_seconds: int
    #: Redundant mode (issue 20): the job id the second node trains under (its own escrow); else None.
    replica_job_id: str | None = None
    #: Seconds a passing release waits for the user's dispute (``verification.dispute_window_s``).
    dispute_window_s: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "user": self.user,
            "payment": self.payment,
            "dataset": self.dataset,
            "training_doc": self.training_doc,
            "memory_mb": self.memory_mb,
            "wall_seconds": self.wall_seconds,
            "replica_job_id": self.replica_job_id,
            "dispute_window_s": self.dispute_window_s,
        }

    def dataset_spec(self) -> DatasetSpec:
        from cyxwiz.datasets import parse_dataset

        return parse_dataset(self.dataset, job_type=str(self.training_doc["job_type"]))

    def model_shape(self) -> ModelShape | None:
        """What the data must fit (None for a script job: its code reads the file as it is)."""
        from cyxwiz.datasets import ModelShape

        if self.training_doc["job_type"] != "model":
            return None
        model, task = self.training_doc["model"], self.training_doc["task"]
        return ModelShape(
            input_shape=tuple(model["input_shape"]),
            input_dtype=str(model.get("input_dtype", "float32")),
            num_classes=int(task["num_classes"]),
        )


def parse_job_request(
    spec: dict[str, Any], *, job_id: str | None = None, minimum_payment: int = 1
) -> JobRequest:
    """Validate a submitted job spec (G1, G2, F3): every problem names its field; nothing is created yet.

    Syntax only: :func:`check_dataset` then reads the data itself. The coordinator (``POST /v1/jobs``) and
    the lifecycle run both, with the ledger's minimum payment, before any job row or escrow exists.
    """
    from cyxwiz.datasets import parse_dataset, resolve_threshold
    from cyxwiz.training.spec import check_job_type, parse_training_job
    from cyxwiz.verification.binding import refuse_submitted_secret

    if not isinstance(spec, dict):
        raise ValidationError("a job spec is a mapping", field="spec", rule="G1")
    allowed = {
        "job_id", "user", "payment", "dataset", "job_type", "model", "training", "task", "limits",
        "verification", "funding", "replica_funding",
    }  # fmt: skip
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValidationError(f"unknown keys {unknown}", field="spec", rule="G1")
    job_id = job_id or spec.get("job_id") or _funded_job_id(spec) or new_job_id()
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        # The coordinator, the object store's layout and every channel use this one form (C3).
        raise ValidationError("must be the canonical form job-<20 lower-case hex>", field="job_id", rule="C3")
    payment = spec.get("payment")
    if not isinstance(payment, int) or isinstance(payment, bool) or payment <= 0:
        raise ValidationError("must be a positive integer of base units", field="payment", rule="F3")
    if payment < minimum_payment:
        raise PaymentTooLowError(
            f"{payment} is below the minimum payment {minimum_payment}", field="payment", rule="F3"
        )
    user = spec.get("user", "user")
    if not isinstance(user, str) or not user:
        raise ValidationError("must be a non-empty string", field="user")
    job_type = check_job_type(spec.get("job_type", "model"))
    dataset = parse_dataset(spec.get("dataset"), job_type=job_type)
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
    task: Any = spec.get("task")
    if job_type == "model":
        # A zero or missing threshold would make the holdout check pass any model (F1).
        threshold = resolve_threshold(task)
        task = {**task, "threshold": threshold}
    doc = {
        "job_id": job_id,
        "job_type": job_type,
        "model": spec.get("model"),
        "dataset": {"uri": f"s3://cyxwiz/jobs/{job_id}/inputs/dataset.npz", "sha256": "0" * 64},
        "training": spec.get("training"),
        "task": task,
    }
    if spec.get("verification") is not None:
        doc["verification"] = spec["verification"]
    refuse_submitted_secret(doc)
    verification = parse_training_job(doc).verification  # full G1/G2 validation before any escrow exists
    replica_job_id = _redundancy(spec, job_id=job_id, job_type=job_type, verification=verification)
    return JobRequest(
        job_id=job_id,
        user=user,
        payment=payment,
        dataset=dataset.to_dict(),
        training_doc=doc,
        memory_mb=memory_mb,
        wall_seconds=wall_seconds,
        replica_job_id=replica_job_id,
        dispute_window_s=verification.dispute_window_s,
    )


def _redundancy(spec: dict[str, Any], *, job_id: str, job_type: str, verification: Any) -> str | None:
    """The issue-20 rules of the verification section: the second node's job id of a redundant job."""
    if verification.mode != "redundant":
        if spec.get("replica_funding") is not None:
            raise ValidationError(
                "only a redundant job funds a second node", field="replica_funding", rule="F1"
            )
        return None
    # Refereed delegation: a second node trains the same job under its own job id and escrow, which the
    # user's client funds as it funds the first (F1: no user key here).
    if job_type != "model":
        raise ValidationError(
            "redundant mode referees model jobs (replayable segments)", field="verification.mode", rule="F1"
        )
    return _replica_job_id(spec, job_id=job_id)


def _replica_job_id(spec: dict[str, Any], *, job_id: str) -> str:
    """The second node's job id: the one the user's client signed the second lock for (F1, G1)."""
    from cyxwiz.ids import JOB_ID

    funding = spec.get("replica_funding")
    value = funding.get("job_id") if isinstance(funding, dict) else None
    if funding is None:
        raise ValidationError(
            "redundant mode pays two nodes: the user's client signs a second lock (UserWallet.fund_spec)",
            field="replica_funding",
            rule="F1",
        )
    if not isinstance(value, str) or not JOB_ID.fullmatch(value):
        raise ValidationError(
            "must be a job id in canonical form (job-<20 hex>)", field="replica_funding.job_id", rule="G1"
        )
    if value == job_id:
        raise ValidationError(
            "the second node's job id must differ from the first", field="replica_funding.job_id", rule="F1"
        )
    return value


def replica_request(request: JobRequest) -> JobRequest:
    """The second node's share of a redundant job: same spec and payment, its own job id and escrow."""
    from dataclasses import replace

    if request.replica_job_id is None:
        raise ValidationError("not a redundant job", field="verification.mode", rule="F1")
    doc = json.loads(json.dumps(request.training_doc))
    doc["job_id"] = request.replica_job_id
    doc["dataset"]["uri"] = f"s3://cyxwiz/jobs/{request.replica_job_id}/inputs/dataset.npz"
    return replace(request, job_id=request.replica_job_id, training_doc=doc, replica_job_id=None)


def replica_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` as the second node's escrow sees it: the second signed lock is its funding."""
    return {**spec, "funding": spec.get("replica_funding"), "replica_funding": None}


def dataset_sources(store: BaseObjectStore) -> DatasetSources:
    """Where this control plane reads datasets: its store (users' areas) plus the environment's policy."""
    from cyxwiz.datasets import DatasetSources

    return DatasetSources.from_env(store=store)


def check_dataset(request: JobRequest, sources: DatasetSources) -> CheckedData:
    """The one dataset validator: access, size, SHA-256, format, shapes, labels, NaN/inf. Creates nothing."""
    from cyxwiz.datasets import validate_dataset
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.sampling import plan_for_job

    spec = request.dataset_spec()
    checked = validate_dataset(spec, sources=sources, user=request.user, shape=request.model_shape())
    if request.training_doc.get("job_type") == "model":
        rows = len(checked.data)
        held = (
            0 if checked.holdout is not None else min(rows - 1, max(1, round(rows * spec.holdout_fraction)))
        )
        # F1 (issue 20): the verification plan; a strict spec whose target cannot fit is refused here.
        plan_for_job(parse_training_job(request.training_doc), train_rows=rows - held)
    return checked


def minimum_payment(config: ControlPlaneConfig) -> int:
    """The ledger's minimum payment (F3), the bound ``POST /v1/jobs`` and the lifecycle both apply."""
    from cyxwiz.ledger.config import LedgerConfig

    return int(LedgerConfig.from_file(config.ledger_config).minimum_payment)


def _funded_job_id(spec: dict[str, Any]) -> str | None:
    funding = spec.get("funding")
    value = funding.get("job_id") if isinstance(funding, dict) else None
    return value if isinstance(value, str) else None


#: The longest a lifecycle run holds a job open for its owner's signed lock (the UI form's bound).
MAX_AWAIT_FUNDING_S = 3600


def open_unfunded(
    channel: ControlChannel, spec: dict[str, Any], *, sources: DatasetSources, minimum_payment: int
) -> JobRequest:
    """A spec without the user's signed lock (the Prefect UI form has no wallet): validated fully, data
    included, then its job row made in ``awaiting-funding``, the only status a lock may be handed in for
    (``POST /v1/jobs/{id}/funding``). Nothing else exists: no escrow, no dispatch (F1)."""
    from cyxwiz.coordinator.store import AWAITING_FUNDING

    request = parse_job_request(spec, minimum_payment=minimum_payment)
    check_dataset(request, sources)
    public = {k: v for k, v in spec.items() if k not in ("job_id", "funding")}
    channel.create_job(
        user=request.user,
        spec={**public, "user": request.user},
        duration_s=request.wall_seconds,
        job_id=request.job_id,
        status=AWAITING_FUNDING,
    )
    return request


def await_funding(
    channel: ControlChannel,
    job_id: str,
    *,
    timeout_s: float,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The lock the owner's client handed in for ``job_id`` (checked at the door), polled for at most
    ``timeout_s``; then the job ends ``expired`` with nothing locked or dispatched (F1)."""
    deadline = clock() + timeout_s
    while True:
        funding = channel.job(job_id).get("funding")
        if funding:
            return dict(funding)
        if clock() >= deadline:
            channel.set_status(job_id, "expired")
            raise ValidationError(
                f"not funded within {timeout_s:g} s: the job expired, nothing was locked or dispatched",
                field="funding",
                rule="F1",
            )
        sleep(min(interval_s, max(0.0, deadline - clock())))


def funding_of(spec: dict[str, Any], *, job_id: str) -> Funding:
    """The escrow lock the user's client signed for this job (F1: the control plane holds no user key)."""
    from cyxwiz.ledger.client_funding import Funding

    if spec.get("funding") is None:
        raise ValidationError(
            "the user's own client signs the escrow lock: submit with `cyxwiz job submit --wallet` or "
            "UserWallet.fund_spec(spec, terms)",
            field="funding",
            rule="F1",
        )
    funding = Funding.from_dict(spec["funding"])
    if funding.job_id != job_id:
        raise ValidationError("the funding was signed for another job", field="funding.job_id", rule="F1")
    return funding


@dataclass(frozen=True, kw_only=True)
class PreparedInputs:
    training_doc: dict[str, Any]
    dataset_key: str
    dataset_sha256: str
    holdout_key: str
    holdout_sha256: str
    #: ``public-derived``, ``secret-split``, ``user-holdout`` or ``none`` (the report states it, F1).
    holdout_source: str = "public-derived"


def prepare_inputs(store: BaseObjectStore, request: JobRequest) -> PreparedInputs:
    """Split the dataset; the training part becomes the job's input, the holdout stays trusted-side.

    The split seed comes from the CSPRNG per job and is sealed (encrypted) with the holdout in the job's
    trusted record under ``holdout/{job}/``, a prefix no job-scoped URL can reach (F1).
    """
    from cyxwiz.datasets import prepare_dataset
    from cyxwiz.storage import layout

    prepared = prepare_dataset(
        request.dataset_spec(),
        sources=dataset_sources(store),
        user=request.user,
        shape=request.model_shape(),
    )
    dataset_key = layout.job_input(request.job_id, "dataset.npz")
    store.put_bytes(dataset_key, prepared.train)
    holdout_key = holdout_key_for(request.job_id)
    store.put_bytes(holdout_key, prepared.holdout, encrypt=True)
    store.put_bytes(holdout_record_key(request.job_id), prepared.record.to_json(), encrypt=True)
    doc = json.loads(json.dumps(request.training_doc))
    doc["dataset"]["sha256"] = prepared.train_sha256
    store.put_bytes(layout.job_input(request.job_id, "job.json"), json.dumps(doc, sort_keys=True).encode())
    return PreparedInputs(
        training_doc=doc,
        dataset_key=dataset_key,
        dataset_sha256=prepared.train_sha256,
        holdout_key=holdout_key,
        holdout_sha256=prepared.holdout_sha256,
        holdout_source=prepared.record.source,
    )


def holdout_record_key(job_id: str) -> str:
    """The job's sealed trusted record: split seed, source and hashes (never under ``jobs/``)."""
    return f"holdout/{job_id}/record.json"


def holdout_key_for(job_id: str) -> str:
    # Outside jobs/{id}/ so no job-scoped URL can ever reach it (G: the node never receives the holdout).
    return f"holdout/{job_id}/holdout.npz"


def open_store(config: ControlPlaneConfig, *, environ: Mapping[str, str] | None = None) -> BaseObjectStore:
    """The control plane's object store: its root from ``config``, the master key (and any other
    ``CYXWIZ_STORE_*`` setting) from ``environ`` (the plane's settings; the process's by default)."""
    import os

    from cyxwiz.storage.local import LocalObjectStore

    env = os.environ if environ is None else environ
    settings = {k: v for k, v in env.items() if k.startswith("CYXWIZ_STORE_")}
    return LocalObjectStore.from_env({**settings, "CYXWIZ_STORE_ROOT": str(config.store_root)})
