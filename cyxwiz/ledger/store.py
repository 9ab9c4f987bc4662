"""Escrow state machine and intent log, persisted with SQLAlchemy (SQLite embedded, PostgreSQL production).

Crash-safety rule (F2): before a transaction is sent, its signed bytes and signature are committed here
together with the escrow's move into a transitional state (``creating``/``releasing``/``refunding``). Every
state change is a compare-and-set on the current state, so two processes racing to move one escrow cannot
both win: the loser gets :class:`~cyxwiz.errors.EscrowStateError` before anything is signed or sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cyxwiz.errors import ConflictError, EscrowStateError, NotFoundError
from cyxwiz.ledger import rawsql
from cyxwiz.ledger.groupsync import WalSync
from cyxwiz.ledger.schema import (
    SIDE_MOVES,
    TRANSITIONAL,
    EscrowState,
    Intent,
    IntentStatus,
    NewIntent,
    escrows,
    intent_from_row,
    intents,
    metadata,
)

# The records live in cyxwiz.ledger.schema; these names stay importable from here (public API).
__all__ = [
    "SIDE_MOVES", "TRANSITIONAL", "EscrowState", "EscrowStore", "Intent", "IntentStatus", "NewIntent",
    "escrows", "intents", "metadata",
]  # fmt: skip


@dataclass(frozen=True)
class Finished:
    """What concluding a confirmed intent did: ``concluded`` only for the one call that moved it out of
    ``prepared``; ``row``, the escrow as this call moved it (None for a side move, or when another
    process had already moved it)."""

    concluded: bool
    row: dict[str, Any] | None = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # Commits reach the WAL without a flush; intents are made durable by one group fsync (WalSync).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _now() -> datetime:
    return datetime.now(UTC)


class EscrowStore:
    """Rows and compare-and-set transitions. One instance per process; safe to share across threads."""

    def __init__(
        self,
        *,
        engine: Engine,
        wal: WalSync | None = None,
        fast: rawsql.SqlitePool | None = None,
        rounds_files: tuple[Path, Path] | None = None,
    ) -> None:
        self._engine = engine
        self._wal = wal
        #: plain sqlite3 connections for the moves' own statements (SQLite on disk only)
        self._fast = fast
        self._conflicts = rawsql.integrity_errors(engine)
        #: where the processes using this database on this host share their blockhash and signature status
        #: rounds (:mod:`cyxwiz.ledger.hostrounds`; on disk only)
        self.rounds_files = rounds_files
        metadata.create_all(engine)

    @classmethod
    def open(cls, url: str) -> EscrowStore:
        if url.startswith("sqlite"):
            database = sa.engine.make_url(url).database
            on_disk = bool(database) and database != ":memory:"
            # A pooled connection per escrow in flight: past the pool, SQLAlchemy opens and closes one
            # per transaction (connect + pragmas each time).
            pool: dict[str, Any] = {"pool_size": 32, "max_overflow": 32} if on_disk else {}
            engine = sa.create_engine(url, connect_args={"timeout": 30}, **pool)
            # WAL: readers do not block the writer, and a commit is one append; intents are flushed by
            # group commit (WalSync): one fsync for every intent committed in its window.
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            if not on_disk:
                return cls(engine=engine)
            path = Path(str(database)).resolve()
            fast = rawsql.SqlitePool(engine=engine, database=path, setup=_sqlite_pragmas)
            rounds = (Path(f"{path}-blockhash"), Path(f"{path}-statuses"))
            return cls(engine=engine, wal=WalSync(path), fast=fast, rounds_files=rounds)
        return cls(engine=sa.create_engine(url, pool_pre_ping=True))

    @contextmanager
    def _durable(self, *, statements: bool = True) -> Iterator[rawsql.Conn]:
        """A transaction that is on disk when the block exits (the intent rule of F2). ``statements``:
        only this module's raw statements run in it (else a SQLAlchemy connection, for other modules')."""
        with self._writing(statements) as conn:
            yield conn
        if self._wal is not None:
            self._wal.sync()

    def _writing(self, statements: bool) -> AbstractContextManager[rawsql.Conn]:
        if statements and self._fast is not None:
            return self._fast.transaction()
        return rawsql.writing(self._engine)

    def flush(self) -> None:
        """Make every commit so far durable (the group fsync on SQLite; PostgreSQL's commits already are)."""
        if self._wal is not None:
            self._wal.sync()

    def dispose(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self._engine.dispose()

    # -- reads ------------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any]:
        with self._fast.reading() if self._fast is not None else self._engine.connect() as conn:
            row = rawsql.select_escrow(conn, job_id)
        if row is None:
            raise NotFoundError("no escrow for this job", field="job_id", rule="F1")
        return row

    def list_escrows(self, *, states: Iterable[EscrowState] | None = None) -> list[dict[str, Any]]:
        query = sa.select(escrows).order_by(escrows.c.created_at, escrows.c.job_id)
        if states is not None:
            query = query.where(escrows.c.state.in_([s.value for s in states]))
        with self._engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["amount"] = int(Decimal(row["amount"]))
        return rows

    def intents(self, job_id: str | None = None, *, status: IntentStatus | None = None) -> list[Intent]:
        query = sa.select(intents).order_by(intents.c.id)
        if job_id is not None:
            query = query.where(intents.c.job_id == job_id)
        if status is not None:
            query = query.where(intents.c.status == status.value)
        with self._engine.connect() as conn:
            return [intent_from_row(r) for r in conn.execute(query)]

    # -- writes -----------------------------------------------------------------------------------

    def insert_creating(self, *, row: dict[str, Any], intent: NewIntent) -> Intent:
        """Record a new escrow in ``creating`` and its funding intent in one transaction."""
        now = _now()
        try:
            with self._durable() as conn:
                values = dict(row, state=EscrowState.CREATING.value, created_at=now, updated_at=now)
                rawsql.insert(conn, escrows.name, values)
                return self._add_intent(conn, row["job_id"], EscrowState.CREATING, intent, now)
        except self._conflicts:
            pass
        # The job already has a row: only a never-funded (void) escrow may be funded again.
        with self._durable() as conn:
            if self._current(conn, row["job_id"]) != EscrowState.VOID:
                raise ConflictError("an escrow for this job already exists", field="job_id", rule="F2")
            values = {k: v for k, v in row.items() if k != "job_id"}
            self._cas(conn, row["job_id"], [EscrowState.VOID], EscrowState.CREATING, values, now)
            return self._add_intent(conn, row["job_id"], EscrowState.CREATING, intent, now)

    def begin_move(
        self,
        job_id: str,
        *,
        allowed: Sequence[EscrowState],
        transitional: EscrowState,
        intent: NewIntent,
        updates: dict[str, Any] | None = None,
    ) -> Intent:
        """CAS the escrow from one of ``allowed`` into ``transitional`` and record the intent, atomically."""
        now = _now()
        with self._durable() as conn:
            prior = self._cas(conn, job_id, allowed, transitional, updates or {}, now)
            return self._add_intent(conn, job_id, prior, intent, now)

    def update_fields(
        self, job_id: str, *, allowed: Sequence[EscrowState], durable: bool = True, **fields: Any
    ) -> dict[str, Any]:
        """Change non-state fields (or the state itself via ``state=``) while in one of ``allowed``;
        returns the row as changed.

        ``durable=False`` for facts whose loss in a crash is harmless (the next intent's flush carries
        them, SQLite keeping commit order; lost, a release finds no node and the sweep refunds).
        """
        now = _now()
        new_state = fields.pop("state", None)
        values = dict(fields, updated_at=now)
        if new_state is not None:
            values["state"] = EscrowState(new_state).value
        with self._durable() if durable else self._concluding() as conn:
            # one allowed state: the compare-and-set alone, the read only to explain a refusal
            current = allowed[0] if len(allowed) == 1 else self._current(conn, job_id)
            if current not in allowed:
                raise self._state_error(job_id, current)
            row = rawsql.move_escrow(conn, job_id, current.value, values)
            if row is None:
                raise self._state_error(job_id, self._current(conn, job_id))
            return row

    @contextmanager
    def _concluding(self, *, statements: bool = True) -> Iterator[rawsql.Conn]:
        """A transaction that records what the chain already decided, committed without waiting for the disk.

        Only the intent written *before* a send must survive power loss (F2). If this conclusion is lost,
        the intent is found prepared again and :meth:`EscrowLedger.reconcile` concludes it from the
        chain, by signature, exactly as after a crash between send and conclusion. Both databases keep
        commit order, so the next durable commit carries this one with it: two fsyncs per escrow pair
        are saved, the ones no recovery needs.
        """
        with self._writing(statements) as conn:
            if isinstance(conn, Connection) and conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn  # SQLite: committed to the WAL, flushed by the next group sync

    def finish(self, intent: Intent) -> Finished:
        """The intent's transaction is confirmed on chain: the escrow reaches its target state.

        ``concluded`` for the one call that concluded it: the lifecycle and the sweep may both see one
        release land, and only the concluder audits the settlement (exactly one record per signature, H2).
        """
        now = _now()
        if intent.kind not in TRANSITIONAL:
            return Finished(concluded=self._conclude_side(intent, IntentStatus.CONFIRMED, None, now))
        signature_column = "create_signature" if intent.kind == "create" else "settle_signature"
        with self._concluding() as conn:
            confirmed = {"status": IntentStatus.CONFIRMED.value, "updated_at": now}
            concluded = rawsql.confirm_intent(conn, intent.id, confirmed) == 1
            values: dict[str, Any] = {signature_column: intent.signature}
            if intent.kind == "dispute":  # the funds now sit in the dispute escrow; settled later
                values = {"dispute_account": intent.recipient_wallet}
            if intent.recipient_wallet is not None and intent.kind == "release":
                values["node_wallet"] = intent.recipient_wallet
            values.update(state=intent.target_state.value, updated_at=now)
            row = rawsql.move_escrow(conn, intent.job_id, TRANSITIONAL[intent.kind].value, values)
            if row is None and (current := self._current(conn, intent.job_id)) != intent.target_state:
                raise self._state_error(intent.job_id, current)  # (target reached: finished elsewhere)
            return Finished(concluded=concluded, row=row)

    def abandon(
        self, intent: Intent, *, status: IntentStatus, error: str, revert_to: EscrowState | None = None
    ) -> None:
        """The intent can never land: mark it and put the escrow back (or to ``revert_to``)."""
        now = _now()
        if intent.kind not in TRANSITIONAL:
            self._conclude_side(intent, status, error, now)
            return
        with self._concluding() as conn:
            ended = {"status": status.value, "error": error[:500], "updated_at": now}
            rawsql.update_intent(conn, intent.id, ended, prepared=True)
            self._cas(
                conn, intent.job_id, [TRANSITIONAL[intent.kind]], revert_to or intent.prior_state, {}, now
            )

    def replace(self, old: Intent, new: NewIntent) -> Intent:
        """``old`` expired unsent; record ``new`` for the same move (the escrow stays transitional)."""
        now = _now()
        with self._durable() as conn:
            expired = {
                "status": IntentStatus.EXPIRED.value,
                "error": "blockhash expired unsent",
                "updated_at": now,
            }
            if rawsql.update_intent(conn, old.id, expired, prepared=True) != 1:
                raise ConflictError("intent already settled by another process", rule="F2")
            return self._add_intent(conn, old.job_id, old.prior_state, new, now)

    def record_side_move(
        self, job_id: str, *, intent: NewIntent, claim: Callable[[Connection], object]
    ) -> Intent:
        """Record, durably and in one transaction, an intent of a :data:`SIDE_MOVES` kind for the job's
        escrow (whose state stays as it is) and the owning module's ``claim`` rows (F2)."""
        if intent.kind not in SIDE_MOVES:
            raise ConflictError(f"no side move of kind {intent.kind!r} is registered", field="kind")
        now = _now()
        with self._durable(statements=False) as conn:
            assert isinstance(conn, Connection)
            current = self._current(conn, job_id)
            claim(conn)
            return self._add_intent(conn, job_id, current, intent, now)

    def _conclude_side(self, intent: Intent, status: IntentStatus, error: str | None, now: datetime) -> bool:
        effect = SIDE_MOVES.get(intent.kind)
        if effect is None:  # the owning module is not loaded: leave it prepared rather than guess
            raise ConflictError(f"no side move of kind {intent.kind!r} is registered", field="kind")
        with self._concluding(statements=False) as conn:  # the owner's effect runs SQLAlchemy statements
            assert isinstance(conn, Connection)
            values: dict[str, Any] = {"status": status.value, "updated_at": now}
            if error is not None:
                values["error"] = error[:500]
            if (
                rawsql.update_intent(conn, intent.id, values, prepared=True) != 1
            ):  # only the one transaction that concludes the intent applies its effect
                return False
            effect(conn, intent, status is IntentStatus.CONFIRMED)
            return True

    # -- helpers ----------------------------------------------------------------------------------

    def _add_intent(
        self, conn: rawsql.Conn, job_id: str, prior: EscrowState, intent: NewIntent, now: datetime
    ) -> Intent:
        intent_id = rawsql.insert(conn, intents.name, {
            "job_id": job_id, "kind": intent.kind, "status": IntentStatus.PREPARED.value,
            "signature": intent.signature, "tx": intent.tx, "last_valid_height": intent.last_valid_height,
            "prior_state": prior.value, "target_state": intent.target_state.value,
            "recipient_wallet": intent.recipient_wallet, "created_at": now, "updated_at": now,
        }, returning="id")  # fmt: skip
        return Intent(
            id=int(intent_id), job_id=job_id, kind=intent.kind, status=IntentStatus.PREPARED,
            signature=intent.signature, tx=intent.tx, last_valid_height=intent.last_valid_height,
            prior_state=prior, target_state=intent.target_state, recipient_wallet=intent.recipient_wallet,
            error=None,
        )  # fmt: skip

    def _current(self, conn: rawsql.Conn, job_id: str) -> EscrowState:
        state = rawsql.escrow_state(conn, job_id)
        if state is None:
            raise NotFoundError("no escrow for this job", field="job_id", rule="F1")
        return EscrowState(state)

    def _cas(  # noqa: PLR0917 - internal helper, called in one shape
        self,
        conn: rawsql.Conn,
        job_id: str,
        allowed: Sequence[EscrowState],
        new_state: EscrowState,
        values: dict[str, Any],
        now: datetime,
    ) -> EscrowState:
        values = dict(values, state=new_state.value, updated_at=now)
        if len(allowed) == 1:  # one allowed state: one statement, the read only to explain a refusal
            if rawsql.update_escrow(conn, job_id, allowed[0].value, values) != 1:
                raise self._state_error(job_id, self._current(conn, job_id))
            return allowed[0]
        current = self._current(conn, job_id)
        if current not in allowed:
            raise self._state_error(job_id, current)
        if rawsql.update_escrow(conn, job_id, current.value, values) != 1:
            # another process moved it between our read and write
            raise self._state_error(job_id, self._current(conn, job_id))
        return current

    @staticmethod
    def _state_error(job_id: str, current: EscrowState) -> EscrowStateError:
        hints = {
            EscrowState.RELEASED: "already released to the node; an escrow moves at most once",
            EscrowState.REFUNDED: "already refunded to the user; an escrow moves at most once",
            EscrowState.DISPUTED: "the escrow is disputed; only an arbiter's resolve can move it",
            EscrowState.RELEASING: "a release is in flight; run the reconciler",
            EscrowState.REFUNDING: "a refund is in flight; run the reconciler",
            EscrowState.CREATING: "the funding transaction is in flight; run the reconciler",
            EscrowState.VOID: "the escrow was never funded",
            EscrowState.SETTLING: "a verified release is pending; the sweep retries it, a refund is refused",
            EscrowState.DISPUTING: "the move into the dispute escrow is in flight; run the reconciler",
        }
        return EscrowStateError(
            f"escrow for job {job_id!r} is {current.value}: {hints.get(current, 'not allowed now')}",
            field="job_id",
            rule="F2",
        )
