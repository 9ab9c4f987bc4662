"""The dispute window (issue 20; SPEC F1): a release waits, the user may object with evidence, the arbiter
decides with the same replay the verifier uses.

After a passing verification the escrow is released only when ``verification.dispute_window_s`` has passed
without a dispute. Within the window the job's user may open one with evidence: a ``segment`` (a committed
segment they claim does not reproduce — decided by a bit-exact replay). Evidence must have been fixed
before the model was delivered: a test set picked afterwards can always be rows the model gets wrong, so
it is no evidence (a user's holdout committed at submission is checked by the verifier before any release).
Opening freezes the escrow (``dispute``); the arbiter's flow resolves it (``resolve``: refund when
upheld, release otherwise). The escrow side is a Protocol: :class:`cyxwiz.ledger.ledger.Ledger` fits it as
it is; stake slashing plugs in through :class:`Slasher` where the ledger offers it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cyxwiz.errors import ConflictError, ValidationError
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
    kind: Literal["segment"] = "segment"
    #: The committed start step of the segment claimed not to reproduce.
    segment_start: int | None = None

    def describe(self) -> str:
        return f"segment starting at step {self.segment_start} does not reproduce"


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
    if evidence.kind != "segment" or evidence.segment_start is None:
        raise ValidationError("a segment dispute names the segment's start step", field="segment_start")
    escrow.dispute(job_id=job_id, reason=f"user dispute: {evidence.describe()}"[:200])


def resolve_dispute(
    evidence: Evidence,
    *,
    job: TrainingJob,
    data: Dataset,
    output_dir: Path,
    commitments: list[Commitment],
    trainer: str | None,
) -> Resolution:
    """The arbiter's decision, from the same deterministic replay and evaluation the verifier uses, of the
    run of ``trainer``: the PeerID of the key that signed the node's proof."""
    engine.make_deterministic()
    return _segment(
        evidence, job=job, data=data, output_dir=output_dir, commitments=commitments, trainer=trainer
    )


def _segment(
    evidence: Evidence,
    *,
    job: TrainingJob,
    data: Dataset,
    output_dir: Path,
    commitments: list[Commitment],
    trainer: str | None,
) -> Resolution:
    index = next((i for i, c in enumerate(commitments[:-1]) if c.step == evidence.segment_start), None)
    if index is None:
        return Resolution(
            upheld=False, reason=f"no committed segment starts at step {evidence.segment_start}"
        )
    start, end = commitments[index], commitments[index + 1]
    schemas = StateSchemas.of(job, data, trainer=trainer)
    state = engine.new_state(job, data, trainer=trainer)
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
