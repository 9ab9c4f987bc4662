"""The stake book: whose tokens sit in which stake account, and every slash claimed (F1, F2).

The chain holds the tokens; these rows say whose they are and what happened to them. A slash is claimed
here in the same commit as its signed transaction's intent, and the book loses the share in the same
commit as the intent's confirmation (:func:`_conclude_slash`, registered as the ``slash`` side move of
the escrow store), so a crash can neither lose a slash nor apply it twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cyxwiz.errors import NotFoundError
from cyxwiz.ledger import rawsql
from cyxwiz.ledger.store import SIDE_MOVES, EscrowState, Intent, IntentStatus, escrows, intents

metadata = sa.MetaData()
stakes = sa.Table(
    "cyxwiz_stakes",
    metadata,
    sa.Column("peer_id", sa.String(100), primary_key=True),
    sa.Column("node_wallet", sa.String(44), nullable=False),
    sa.Column("stake_account", sa.String(44), nullable=False, unique=True),
    sa.Column("amount", sa.Numeric(20, 0), nullable=False),  # what the account holds, base units
    sa.Column("slashed", sa.Numeric(20, 0), nullable=False),
    sa.Column("unstake_requested_at", sa.DateTime(timezone=True)),
    sa.Column("withdrawn", sa.Boolean, nullable=False, default=False),
)
#: one slash per job, recorded before it is sent: a job's fraud is never charged twice (F2)
slashes = sa.Table(
    "cyxwiz_stake_slashes",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("peer_id", sa.String(100), nullable=False),
    sa.Column("amount", sa.Numeric(20, 0), nullable=False),
    sa.Column("report_sha256", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(100), nullable=False),
)


@dataclass(frozen=True)
class StakeRecord:
    peer_id: str
    node_wallet: str
    stake_account: str
    amount: int
    slashed: int
    unstake_requested_at: dt.datetime | None
    withdrawn: bool

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["unstake_requested_at"] = (
            self.unstake_requested_at.isoformat() if self.unstake_requested_at else None
        )
        return data


class StakeBook:
    """Stake rows (the chain holds the tokens; these say whose they are and what happened)."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        self._engine = engine
        metadata.create_all(engine)

    def get(self, peer_id: str) -> StakeRecord:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(stakes).where(stakes.c.peer_id == peer_id)).mappings().first()
        if row is None:
            raise NotFoundError("this node has no stake", field="peer_id", rule="F1")
        values = dict(row)
        at = values["unstake_requested_at"]
        if at is not None and at.tzinfo is None:
            values["unstake_requested_at"] = at.replace(tzinfo=dt.UTC)
        return StakeRecord(**{**values, "amount": int(values["amount"]), "slashed": int(values["slashed"])})

    def find(self, peer_id: str) -> StakeRecord | None:
        try:
            return self.get(peer_id)
        except NotFoundError:
            return None

    def upsert(
        self, *, peer_id: str, node_wallet: str, stake_account: str, add: int, fresh: bool = False
    ) -> None:
        """Add a deposit; ``fresh``: the stake account was (re)created for it, so nothing else is held."""
        with rawsql.writing(self._engine) as conn:  # one writer of this process at a time
            current = conn.execute(sa.select(stakes.c.amount).where(stakes.c.peer_id == peer_id)).scalar()
            if current is not None and fresh:
                current = 0  # a withdrawal closed the account (also one whose bookkeeping a crash lost)
            if current is None:
                conn.execute(stakes.insert().values(
                    peer_id=peer_id, node_wallet=node_wallet, stake_account=stake_account, amount=add,
                    slashed=0, withdrawn=False,
                ))  # fmt: skip
            else:
                conn.execute(
                    stakes.update().where(stakes.c.peer_id == peer_id)
                    .values(amount=int(current) + add, withdrawn=False, unstake_requested_at=None)
                )  # fmt: skip

    def update(self, peer_id: str, **values: Any) -> None:
        with rawsql.writing(self._engine) as conn:  # one writer of this process at a time
            conn.execute(stakes.update().where(stakes.c.peer_id == peer_id).values(**values))

    def slashed_for(self, job_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(slashes).where(slashes.c.job_id == job_id)).mappings().first()
        return None if row is None else dict(row)


def _conclude_slash(conn: sa.engine.Connection, intent: Intent, confirmed: bool) -> None:
    """A slash landed: the stake book loses the share; it never can: the claim goes (a later one may)."""
    row = conn.execute(sa.select(slashes).where(slashes.c.job_id == intent.job_id)).mappings().first()
    if row is None:
        return
    if confirmed:
        conn.execute(
            stakes.update()
            .where(stakes.c.peer_id == row["peer_id"])
            .values(amount=stakes.c.amount - row["amount"], slashed=stakes.c.slashed + row["amount"])
        )
    else:
        conn.execute(slashes.delete().where(slashes.c.job_id == intent.job_id))


SIDE_MOVES["slash"] = _conclude_slash


def owed_query(peer_ids: Collection[str] | None = None) -> Any:
    """Refunded jobs whose refund rests on a fraud report or an upheld dispute, with no slash claimed yet
    (of one node's PeerIDs when ``peer_ids``). Which stake pays is the caller's to resolve: the stake is
    the node's, under whichever of its PeerIDs it was deposited, not the one the escrow names (A7)."""
    fraud = escrows.c.report.like('%"verdict":"fraud"%')
    upheld = sa.and_(escrows.c.dispute_account.is_not(None), escrows.c.resolution == "refund")
    query = (
        sa.select(escrows.c.job_id, escrows.c.report, escrows.c.node_peer_id)
        .outerjoin(slashes, slashes.c.job_id == escrows.c.job_id)
        .where(escrows.c.state == EscrowState.REFUNDED.value, sa.or_(fraud, upheld))
        .where(slashes.c.job_id.is_(None))
    )
    return query if peer_ids is None else query.where(escrows.c.node_peer_id.in_(sorted(peer_ids)))


def slashes_unsettled(store: Any, peer_id: str, peers: Collection[str] = ()) -> int:
    """Slashes the node staked under ``peer_id`` owes: decided (owed, not yet claimed: a job of any of its
    linked ``peers``) or claimed and still in flight."""
    in_flight = (
        sa.select(sa.func.count())
        .select_from(slashes.join(intents, intents.c.job_id == slashes.c.job_id))
        .where(slashes.c.peer_id == peer_id, intents.c.kind == "slash")
        .where(intents.c.status == IntentStatus.PREPARED.value)
    )
    with store._engine.connect() as conn:
        owed = len(conn.execute(owed_query({peer_id, *peers})).all())
        return owed + int(conn.execute(in_flight).scalar() or 0)
