"""The dispute window (issue 20; SPEC F1): a release waits, the user may object with evidence, the arbiter
decides with the same replay the verifier uses.

After a passing verification the escrow is released only when ``verification.dispute_window_s`` has passed
without a dispute. Within the window the job's user may open one with evidence: a ``segment`` (a committed
segment they claim does not reproduce — decided by a bit-exact replay) or a ``testset`` (a labelled test
file on which they claim the model misses the job's threshold — decided by evaluating the delivered
model). Opening freezes the escrow (``dispute``); the arbiter's flow resolves it (``resolve``: refund when
upheld, release otherwise). The escrow side is a Protocol: :class:`cyxwiz.ledger.ledger.Ledger` fits it as
it is; stake slashing plugs in through :class:`Slasher` where the ledger offers it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cyxwiz.errors import ConflictError, CyxwizError, ValidationError
from cyxwiz.training import engine
from cyxwiz.training.data import Dataset
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.commitments import Commitment
from cyxwiz.verification.trace import CheckpointRefused, StateSchemas, read_checkpoint


class DisputeEscrow(Protocol):
    def dispute(self, *, job_id: str, reason: str) -> Any: ...

    def resolve(
        self,
        *,
        job_id: str,
        outcome: Literal["release", "refund"],
        node_wallet: Any = None,
        proof_ref: str | None = None,
    ) -> Any: ...


class Slasher(Protocol):
    def slash(self, *, job_id: str, reason: str) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class DisputeWindow:
    verified_at: dt.datetime
    seconds: int

    @property
    def closes_at(self) -> dt.datetime:
        return self.verified_at + dt.timedelta(seconds=self.seconds)

    def is_open(self, now: dt.datetime) -> bool:
        return now < self.closes_at

    def may_release(self, now: dt.datetime, *, disputed: bool) -> bool:
        """The escrow may be released: the window has closed and no dispute was opened in it."""
        return not disputed and not self.is_open(now)


@dataclass(frozen=True, kw_only=True)
class Evidence:
    kind: Literal["segment", "testset"]
    #: ``segment``: the committed start step of the segment claimed not to reproduce.
    segment_start: int | None = None
    #: ``testset``: a labelled ``.npz`` (X, y) and its SHA-256.
    testset: Path | None = None
    testset_sha256: str | None = None

    def describe(self) -> str:
        if self.kind == "segment":
            return f"segment starting at step {self.segment_start} does not reproduce"
        return f"test set {self.testset_sha256} misses the job's threshold"


@dataclass(frozen=True, kw_only=True)
class Resolution:
    upheld: bool
    reason: str


def open_dispute(
    window: DisputeWindow, *, now: dt.datetime, job_id: str, evidence: Evidence, escrow: DisputeEscrow
) -> None:
    """Freeze the escrow for the arbiter; refused once the window has closed (ConflictError, F1)."""
    if not window.is_open(now):
        raise ConflictError(
            f"the dispute window closed at {window.closes_at.isoformat()}", field="dispute", rule="F1"
        )
    if evidence.kind == "segment" and evidence.segment_start is None:
        raise ValidationError("a segment dispute names the segment's start step", field="segment_start")
    if evidence.kind == "testset" and (evidence.testset is None or evidence.testset_sha256 is None):
        raise ValidationError("a test-set dispute carries the file and its SHA-256", field="testset")
    escrow.dispute(job_id=job_id, reason=f"user dispute: {evidence.describe()}"[:200])


def resolve_dispute(
    evidence: Evidence,
    *,
    job: TrainingJob,
    data: Dataset,
    output_dir: Path,
    commitments: list[Commitment],
) -> Resolution:
    """The arbiter's decision, from the same deterministic replay and evaluation the verifier uses."""
    engine.make_deterministic()
    if evidence.kind == "segment":
        return _segment(evidence, job=job, data=data, output_dir=output_dir, commitments=commitments)
    return _testset(evidence, job=job, data=data, output_dir=output_dir)


def _segment(
    evidence: Evidence, *, job: TrainingJob, data: Dataset, output_dir: Path, commitments: list[Commitment]
) -> Resolution:
    index = next((i for i, c in enumerate(commitments[:-1]) if c.step == evidence.segment_start), None)
    if index is None:
        return Resolution(
            upheld=False, reason=f"no committed segment starts at step {evidence.segment_start}"
        )
    start, end = commitments[index], commitments[index + 1]
    schemas = StateSchemas.of(job, data)
    state = engine.new_state(job, data)
    try:
        engine.load_checkpoint(state, read_checkpoint(output_dir, start, schemas.at(start.step)))
    except CheckpointRefused as exc:
        return Resolution(upheld=True, reason=f"the node's own checkpoint is refused: {exc.message}")
    for step in range(start.step, end.step):
        engine.train_step(state, step)
    if hashlib.sha256(engine.checkpoint_bytes(state, step=end.step)).hexdigest() != end.weights_sha256:
        return Resolution(
            upheld=True, reason=f"segment {start.step}→{end.step} does not reproduce bit for bit"
        )
    return Resolution(upheld=False, reason=f"segment {start.step}→{end.step} reproduces bit for bit")


def _testset(evidence: Evidence, *, job: TrainingJob, data: Dataset, output_dir: Path) -> Resolution:
    from cyxwiz.training.data import load_dataset

    assert job.model is not None and evidence.testset is not None
    try:
        test = load_dataset(
            evidence.testset,
            sha256=evidence.testset_sha256,
            input_shape=job.model.input_shape,
            input_dtype=job.model.input_dtype,
            num_classes=job.task.num_classes,
        )
        state = engine.new_state(job, data)
        state.model.load_state_dict(engine.read_checkpoint(output_dir / "model.safetensors"), strict=True)
    except CyxwizError as exc:
        return Resolution(upheld=False, reason=f"the evidence cannot be evaluated: {exc.message}")
    accuracy = engine.evaluate(state.model, test)["accuracy"]
    if accuracy < job.task.threshold:
        return Resolution(
            upheld=True,
            reason=f"accuracy {accuracy:.4f} on the user's test set < threshold {job.task.threshold}",
        )
    return Resolution(
        upheld=False,
        reason=f"accuracy {accuracy:.4f} on the user's test set ≥ threshold {job.task.threshold}",
    )


def settle_dispute(
    resolution: Resolution,
    *,
    job_id: str,
    escrow: DisputeEscrow,
    node_wallet: Any,
    proof_ref: str | None,
    slasher: Slasher | None = None,
) -> Literal["release", "refund"]:
    """Apply the arbiter's decision: an upheld dispute refunds the user (and slashes the node's stake where
    a slasher exists); a rejected one releases to the node."""
    outcome: Literal["release", "refund"] = "refund" if resolution.upheld else "release"
    escrow.resolve(job_id=job_id, outcome=outcome, node_wallet=node_wallet, proof_ref=proof_ref)
    if resolution.upheld and slasher is not None:
        slasher.slash(job_id=job_id, reason=resolution.reason[:200])
    return outcome
