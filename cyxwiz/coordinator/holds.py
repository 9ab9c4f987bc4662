"""Release holds: the dispute window of a verified job (issue 20, ``verification.dispute_window_s``; F1, F2).

A passing verification whose spec asks for a window does not pay at once: the lifecycle records a hold
(the verifier's attestation, the node's wallet, when the window closes) in the coordinator's database,
which the user's ``POST /v1/jobs/{id}/dispute`` and the control plane both reach. Exactly one of two
compare-and-set transitions wins, so the decision is taken once even under a race at the closing instant:

* ``held → disputed`` (the job's owner, strictly before ``closes_at``): the escrow goes to the dispute
  escrow for the arbiter instead of paying;
* ``held → releasing`` (the control plane, at or after ``closes_at``): the escrow is released.

The row records the decision; the ledger's own state says whether it was carried out, so a lifecycle that
died between the two is finished by the escrow sweep (``settled`` marks the end). Pure SQLAlchemy core.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cyxwiz.errors import ConflictError, NotFoundError, ValidationError

HoldState = Literal["held", "disputed", "releasing", "settled"]
metadata = sa.MetaData()
holds = sa.Table(
    "cyx_release_holds",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("node_wallet", sa.String(64), nullable=False),
    sa.Column("attestation", sa.Text, nullable=False),
    sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("evidence", sa.JSON),
    sa.Column("filed_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.String(16)),
)
#: What a dispute may carry (cyxwiz.verification.dispute.Evidence): a committed segment, and why.
EVIDENCE_KINDS = ("segment",)
#: Why a test set is no evidence (F1, threat "payment fraud" by a user): rows chosen after the model was
#: delivered can always be rows it gets wrong, so an honest node would lose its pay and its stake.
TESTSET_REFUSED = (
    "a test set chosen after the model was delivered is no evidence (any model misses some rows): "
    "name a committed segment that does not reproduce, or commit a holdout at submission "
    "(dataset.holdout), which the verifier checks before any release"
)


@dataclass(frozen=True, kw_only=True)
class Hold:
    job_id: str
    user_id: str
    node_wallet: str
    attestation: str
    closes_at: dt.datetime
    state: HoldState
    evidence: dict[str, Any] | None
    filed_at: dt.datetime | None
    outcome: str | None

    def public(self) -> dict[str, Any]:
        """What the job's owner may read (no attestation: it is the verifier's, for the ledger)."""
        return {
            "job_id": self.job_id,
            "state": self.state,
            "closes_at": self.closes_at.isoformat(),
            "evidence": self.evidence,
            "filed_at": self.filed_at.isoformat() if self.filed_at else None,
            "outcome": self.outcome,
        }


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def check_evidence(evidence: object) -> dict[str, Any]:
    """A dispute's evidence, strictly (G): kind, its one detail, and a short reason."""
    if isinstance(evidence, dict) and evidence.get("kind") == "testset":
        raise ValidationError(TESTSET_REFUSED, field="evidence.kind", rule="F1")
    if not isinstance(evidence, dict) or evidence.get("kind") not in EVIDENCE_KINDS:
        raise ValidationError("kind must be 'segment'", field="evidence.kind", rule="F1")
    allowed = {"kind", "reason", "segment_start"}
    unknown = sorted(set(evidence) - allowed)
    if unknown:
        raise ValidationError(f"unknown keys {unknown}", field="evidence", rule="G1")
    reason = evidence.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ValidationError("at most 500 characters", field="evidence.reason", rule="G1")
    start = evidence.get("segment_start")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ValidationError(
            "a segment dispute names the segment's start step", field="evidence.segment_start", rule="F1"
        )
    return dict(evidence)


class HoldBook:
    """Release holds over the coordinator's database (its engine; the table is created on first use)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

    def get(self, job_id: str) -> Hold:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(holds).where(holds.c.job_id == job_id)).mappings().first()
        if row is None:
            raise NotFoundError("no release is held for this job", field="job_id", rule="F1")
        values = dict(row)
        values["closes_at"] = _utc(values["closes_at"])
        values["filed_at"] = _utc(values["filed_at"])
        return Hold(**values)

    def find(self, job_id: str) -> Hold | None:
        try:
            return self.get(job_id)
        except NotFoundError:
            return None

    def hold(
        self, *, job_id: str, user_id: str, node_wallet: str, attestation: str, closes_at: dt.datetime
    ) -> Hold:
        """Record the hold once; a second call (a retried task) returns the first one unchanged."""
        try:
            with self._engine.begin() as conn:
                conn.execute(holds.insert().values(
                    job_id=job_id, user_id=user_id, node_wallet=node_wallet, attestation=attestation,
                    closes_at=closes_at, state="held",
                ))  # fmt: skip
        except sa.exc.IntegrityError:
            pass
        return self.get(job_id)

    def file_dispute(self, *, job_id: str, user_id: str, evidence: object, now: dt.datetime) -> Hold:
        """The owner's dispute, strictly inside the window and only while the release is held (F1, C2)."""
        checked = check_evidence(evidence)
        hold = self.get(job_id)
        if hold.user_id != user_id:
            raise NotFoundError("no release is held for this job", field="job_id", rule="C2")
        with self._engine.begin() as conn:
            moved = conn.execute(
                holds.update()
                .where(holds.c.job_id == job_id, holds.c.state == "held", holds.c.closes_at > now)
                .values(state="disputed", evidence=checked, filed_at=now)
            ).rowcount
        if moved != 1:
            current = self.get(job_id)
            if current.state == "held" or current.closes_at <= now:
                raise ConflictError(
                    f"the dispute window closed at {current.closes_at.isoformat()}",
                    field="dispute",
                    rule="F1",
                )
            raise ConflictError(f"the release is already {current.state}", field="dispute", rule="F1")
        return self.get(job_id)

    def close(self, job_id: str, *, now: dt.datetime) -> Hold:
        """At or after ``closes_at``: ``held → releasing`` unless a dispute won first; the hold as it is."""
        with self._engine.begin() as conn:
            conn.execute(
                holds.update()
                .where(holds.c.job_id == job_id, holds.c.state == "held", holds.c.closes_at <= now)
                .values(state="releasing")
            )
        return self.get(job_id)

    def settled(self, job_id: str, *, outcome: str) -> None:
        """The decision was carried out on the ledger (released, or moved into the dispute escrow)."""
        with self._engine.begin() as conn:
            conn.execute(
                holds.update()
                .where(holds.c.job_id == job_id, holds.c.state.in_(("disputed", "releasing")))
                .values(state="settled", outcome=outcome)
            )

    def pending(self) -> list[Hold]:
        """Holds not yet carried out to the end (the sweep's work list)."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(holds.c.job_id).where(holds.c.state != "settled")).all()
        return [self.get(str(row[0])) for row in rows]
