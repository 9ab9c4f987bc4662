"""The escrow ledger's records: escrow states, the intent log's rows and tables (SPEC F2).

An escrow moves through these states only by compare-and-set (:mod:`cyxwiz.ledger.store`); each move is
preceded by an intent row holding the signed transaction, so a crash anywhere leaves enough on disk to
finish it (:mod:`cyxwiz.ledger.recovery`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


class EscrowState(enum.StrEnum):
    CREATING = "creating"
    LOCKED = "locked"
    #: a release was approved (passing report) but the chain refused it or it timed out: only a release
    #: (the sweep retries it) or a dispute may follow, never a refund (F1: the honest node is paid)
    SETTLING = "settling"
    DISPUTING = "disputing"  # the move into the dispute escrow is in flight
    DISPUTED = "disputed"
    RELEASING = "releasing"
    REFUNDING = "refunding"
    RELEASED = "released"
    REFUNDED = "refunded"
    VOID = "void"  # the funding transaction never landed: nothing is locked

    @property
    def terminal(self) -> bool:
        return self in (EscrowState.RELEASED, EscrowState.REFUNDED, EscrowState.VOID)


TRANSITIONAL = {
    "create": EscrowState.CREATING,
    "release": EscrowState.RELEASING,
    "refund": EscrowState.REFUNDING,
    "dispute": EscrowState.DISPUTING,
}


class IntentStatus(enum.StrEnum):
    PREPARED = "prepared"  # signed and recorded; may or may not have reached the chain
    CONFIRMED = "confirmed"
    FAILED = "failed"  # the chain refused it: nothing moved
    EXPIRED = "expired"  # its blockhash expired without it landing: it can never land


metadata = sa.MetaData()

escrows = sa.Table(
    "cyxwiz_escrows",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    # Numeric(20): u64 base units do not fit PostgreSQL's signed BIGINT.
    sa.Column("amount", sa.Numeric(20, 0), nullable=False),
    sa.Column("mint", sa.String(44), nullable=False),
    sa.Column("user_wallet", sa.String(44), nullable=False),
    sa.Column("user_token_account", sa.String(44), nullable=False),
    sa.Column("escrow_account", sa.String(44), nullable=False, unique=True),
    sa.Column("node_wallet", sa.String(44)),
    sa.Column("node_peer_id", sa.String(100)),
    sa.Column("proof_ref", sa.String(256)),
    # the verifier-signed attestation a release carried (JSON), kept so the sweep can retry that release
    sa.Column("report", sa.Text),
    sa.Column("report_sha256", sa.String(64)),
    sa.Column("dispute_account", sa.String(44)),
    # when the job's wall time plus the dispatch margin ends, and the lifecycle run that owns the escrow
    sa.Column("deadline", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("dispute_reason", sa.String(500)),
    sa.Column("resolution", sa.String(16)),
    sa.Column("create_signature", sa.String(100)),
    sa.Column("settle_signature", sa.String(100)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

intents = sa.Table(
    "cyxwiz_escrow_intents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), sa.ForeignKey("cyxwiz_escrows.job_id"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # create | release | refund | dispute
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("signature", sa.String(100), nullable=False, unique=True),
    sa.Column("tx", sa.LargeBinary, nullable=False),
    sa.Column("last_valid_height", sa.BigInteger, nullable=False),
    sa.Column("prior_state", sa.String(16), nullable=False),
    sa.Column("target_state", sa.String(16), nullable=False),
    sa.Column("recipient_wallet", sa.String(44)),
    sa.Column("error", sa.String(500)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Intent:
    id: int
    job_id: str
    kind: str
    status: IntentStatus
    signature: str
    tx: bytes
    last_valid_height: int
    prior_state: EscrowState
    target_state: EscrowState
    recipient_wallet: str | None
    error: str | None


@dataclass(frozen=True)
class NewIntent:
    kind: str
    signature: str
    tx: bytes
    last_valid_height: int
    target_state: EscrowState
    recipient_wallet: str | None = None


#: What concluding an intent that moves money *outside* the escrow changes (a slash out of a node's stake
#: account): the module that owns the move registers it by kind. It runs in the same transaction as the
#: intent's move out of ``prepared`` (``confirmed`` True or False), so a crash never applies it twice
#: nor loses it (F2); the escrow's own state does not change.
SideEffect = Callable[[Connection, "Intent", bool], None]
SIDE_MOVES: dict[str, SideEffect] = {}


def intent_from_row(row: Any) -> Intent:
    return Intent(
        id=row.id,
        job_id=row.job_id,
        kind=row.kind,
        status=IntentStatus(row.status),
        signature=row.signature,
        tx=bytes(row.tx),
        last_valid_height=int(row.last_valid_height),
        prior_state=EscrowState(row.prior_state),
        target_state=EscrowState(row.target_state),
        recipient_wallet=row.recipient_wallet,
        error=row.error,
    )
