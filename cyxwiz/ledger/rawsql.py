"""The few statements of an escrow move, run on the DBAPI cursor of a transaction (F2 kept).

An escrow pair runs about a dozen statements; through SQLAlchemy Core each one is built, cache-keyed and
compiled again, about 1 ms apiece on the reference machine, more than LiteSVM takes for the transactions
themselves. These are the same statements as text, written once with ``:name`` parameters (sqlite3's
``named`` style, rewritten once to ``%(name)s`` for psycopg), executed on the cursor of the transaction
the store opened: a SQLAlchemy one (PostgreSQL), or one on the store's own plain sqlite3 connections
(:class:`SqlitePool`, SQLite on disk). Commit, rollback, the group fsync and every compare-and-set rule
stay where they were. Values are bound as SQLAlchemy would store them (SQLite: UTC times as text), so the
store's other, colder reads through SQLAlchemy see the same rows.
"""

from __future__ import annotations

import functools
import queue
import re
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

from cyxwiz.ledger.schema import escrows, intents

ESCROW_COLUMNS = tuple(c.name for c in escrows.columns)
_TIMES = frozenset({"created_at", "updated_at", "deadline"})
#: every identifier in these statements is one of the schema's own table and column names (_checked):
#: values only ever travel as parameters
_COLUMNS: dict[str, frozenset[str]] = {}


def register(table: Any) -> None:
    """Allow :func:`insert` / updates on ``table`` (a SQLAlchemy Table of this package)."""
    _COLUMNS[table.name] = frozenset(c.name for c in table.columns)


register(escrows)
register(intents)
_SELECT_ESCROW = f"SELECT {', '.join(ESCROW_COLUMNS)} FROM {escrows.name} WHERE job_id = :job_id"  # noqa: S608
_RETURNING = f" RETURNING {', '.join(ESCROW_COLUMNS)}"
_SELECT_STATE = f"SELECT state FROM {escrows.name} WHERE job_id = :job_id"  # noqa: S608


@dataclass(frozen=True)
class RawTx:
    """A transaction on a plain sqlite3 connection (:class:`SqlitePool`): all these statements need."""

    driver_connection: sqlite3.Connection


#: where the statements below run: a SQLAlchemy transaction, or a plain SQLite one
Conn = Connection | RawTx


class SqlitePool:
    """Plain sqlite3 connections to the store's database file for the hot statements of a move.

    A transaction through SQLAlchemy's pool costs about three times the statements it runs on this
    machine (checkout, events, reset-on-return); an escrow pair runs about ten. These connections get the
    same pragmas, and the ``sqlite3`` module's own transaction handling (an implicit ``BEGIN`` before the
    first write, as SQLAlchemy's pysqlite dialect leaves it), so each transaction is the one it was.
    Writers take the same per-engine lock as :func:`writing`, and since they run one at a time they share
    one connection: SQLite drops a connection's whole page cache when it finds the database changed by
    another connection, so writers rotating through the pool re-read every page they touch (about five
    reads per statement); the one writing connection finds its cache current unless another process wrote.
    """

    def __init__(self, *, engine: Engine, database: Path, setup: Callable[[Any, Any], None]) -> None:
        self._engine = engine
        self._database = database
        self._setup = setup
        self._lock = _writer(engine)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._writer_conn: sqlite3.Connection | None = None
        #: a writing transaction is open on ``_writer_conn`` (the writers' lock is re-entrant: a transaction
        #: opened inside another on the same thread gets a pooled connection, as before)
        self._writing = False

    def _checkout(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        dbapi = sqlite3.connect(self._database, timeout=30, check_same_thread=False)
        self._setup(dbapi, None)
        self._all.append(dbapi)
        return dbapi

    @contextmanager
    def transaction(self) -> Iterator[RawTx]:
        """One writing transaction: committed when the block exits, rolled back if it raises."""
        with self._lock:
            nested = self._writing
            if nested:
                dbapi = self._checkout()
            else:
                if self._writer_conn is None:
                    self._writer_conn = self._checkout()
                dbapi = self._writer_conn
                self._writing = True
            try:
                yield RawTx(dbapi)
                dbapi.commit()
            except BaseException:
                dbapi.rollback()
                raise
            finally:
                if nested:
                    self._idle.put(dbapi)
                else:
                    self._writing = False

    @contextmanager
    def reading(self) -> Iterator[RawTx]:
        """A read. On the writing connection when no writer holds it (its pages are the current ones; a
        pooled connection re-reads each page another connection changed since its last use), else pooled."""
        if self._lock.acquire(blocking=False):
            try:
                writer = self._writer_conn
                if not self._writing and writer is not None:
                    try:
                        yield RawTx(writer)
                    finally:
                        writer.rollback()  # as below: no snapshot outlives the read
                    return
            finally:
                self._lock.release()
        dbapi = self._checkout()
        try:
            yield RawTx(dbapi)
        finally:
            dbapi.rollback()  # nothing to undo; ends any read snapshot before the next user
            self._idle.put(dbapi)

    def close(self) -> None:
        for dbapi in self._all:
            dbapi.close()
        self._all.clear()
        self._writer_conn = None


_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``; on SQLite, one writing transaction of this process at a time.

    SQLite admits one writer; a second one that finds the lock taken sleeps in SQLite's busy handler (1,
    2, 5, 10 ms …) however soon the first commits, and under the GIL the first may hold it for a whole
    switch interval. Escrows in flight on threads queue here instead and start the moment it is free. Other
    processes (the sweep) still meet SQLite's own lock and busy timeout; the transactions themselves, and
    where the group fsync happens (after this), are unchanged.
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with _writer(engine), engine.begin() as conn:
        yield conn


def _writer(engine: Engine) -> threading.RLock:
    lock = _WRITERS.get(engine)
    if lock is None:
        with _WRITERS_LOCK:
            lock = _WRITERS.setdefault(engine, threading.RLock())
    return lock


@functools.cache
def _styled(sql: str, sqlite: bool) -> str:
    # sqlite3 takes ``:name`` itself (whatever paramstyle SQLAlchemy uses with it); psycopg ``%(name)s``
    return sql if sqlite else re.sub(r":(\w+)", r"%(\1)s", sql)


def _sqlite(conn: Conn) -> bool:
    return isinstance(conn, RawTx) or conn.dialect.name == "sqlite"


def _bind(conn: Conn, values: dict[str, Any]) -> dict[str, Any]:
    return _sqlite_values(values) if _sqlite(conn) else values


def _sqlite_values(values: dict[str, Any]) -> dict[str, Any]:
    # SQLAlchemy's SQLite DateTime stores the UTC wall time as text: the same here, so both read alike.
    return {k: _sqlite_time(v) if isinstance(v, datetime) else v for k, v in values.items()}


@functools.lru_cache(maxsize=64)
def _sqlite_time(value: datetime) -> str:
    # a move stamps several columns and rows with one ``now``: formatted once. SQLAlchemy's format,
    # "%Y-%m-%d %H:%M:%S.%f" (microseconds always written), without strftime's format parsing
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def execute(conn: Conn, sql: str, values: dict[str, Any]) -> Any:
    """Run ``sql`` (``:name`` parameters) on ``conn``'s own DBAPI connection, inside its transaction."""
    if isinstance(conn, RawTx):  # the moves' path: sqlite3 itself, ``:name`` as written
        return conn.driver_connection.execute(sql, _sqlite_values(values))
    cursor: Any = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(_styled(sql, _sqlite(conn)), _bind(conn, values))
    return cursor


def select_escrow(conn: Conn, job_id: str) -> dict[str, Any] | None:
    row = execute(conn, _SELECT_ESCROW, {"job_id": job_id}).fetchone()
    return None if row is None else _escrow_row(conn, row)


def _escrow_row(conn: Conn, row: Any) -> dict[str, Any]:
    result = dict(zip(ESCROW_COLUMNS, row, strict=True))
    amount = result["amount"]
    if type(amount) is not int:  # SQLite hands NUMERIC(20, 0) back as an int; PostgreSQL as a Decimal
        result["amount"] = int(Decimal(str(amount)))
    if _sqlite(conn):
        for name in _TIMES:
            if isinstance(result[name], str):
                result[name] = datetime.fromisoformat(result[name])
    return result


def escrow_state(conn: Conn, job_id: str) -> str | None:
    row = execute(conn, _SELECT_STATE, {"job_id": job_id}).fetchone()
    return None if row is None else str(row[0])


def update_escrow(conn: Conn, job_id: str, state: str, values: dict[str, Any]) -> int:
    """``UPDATE`` the escrow's ``values`` where it still is in ``state`` (the compare-and-set); rowcount."""
    names = sorted(values)
    sql = _update_sql(escrows.name, tuple(names), "job_id = :w_job_id AND state = :w_state")
    params = {f"v_{k}": values[k] for k in names} | {"w_job_id": job_id, "w_state": state}
    return int(execute(conn, sql, params).rowcount)


def move_escrow(conn: Conn, job_id: str, state: str, values: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`update_escrow` that returns the row as the update left it (no read after it), or None when
    the compare-and-set missed. ``RETURNING``: SQLite 3.35+, PostgreSQL."""
    names = sorted(values)
    sql = _update_sql(escrows.name, tuple(names), "job_id = :w_job_id AND state = :w_state") + _RETURNING
    params = {f"v_{k}": values[k] for k in names} | {"w_job_id": job_id, "w_state": state}
    rows = execute(conn, sql, params).fetchall()  # all of them: the statement is finished before commit
    return _escrow_row(conn, rows[0]) if rows else None


def update_intent(conn: Conn, intent_id: int, values: dict[str, Any], *, prepared: bool) -> int:
    """``UPDATE`` one intent row (only while still ``prepared`` when ``prepared``); rowcount."""
    names = sorted(values)
    where = "id = :w_id AND status = 'prepared'" if prepared else "id = :w_id"
    params = {f"v_{k}": values[k] for k in names} | {"w_id": intent_id}
    return int(execute(conn, _update_sql(intents.name, tuple(names), where), params).rowcount)


def confirm_intent(conn: Conn, intent_id: int, values: dict[str, Any]) -> int:
    """``UPDATE`` one intent row to ``values`` unless it is confirmed already: 1 for the one caller that
    confirms it (any earlier status gives way to the chain's word), 0 for everyone after."""
    names = sorted(values)
    where = "id = :w_id AND status <> 'confirmed'"
    params = {f"v_{k}": values[k] for k in names} | {"w_id": intent_id}
    return int(execute(conn, _update_sql(intents.name, tuple(names), where), params).rowcount)


def insert(conn: Conn, table: str, values: dict[str, Any], *, returning: str | None = None) -> Any:
    """``INSERT`` one row; ``returning="id"``: its ``INTEGER PRIMARY KEY`` (SQLite's rowid: the cursor
    has it without a ``RETURNING`` row to step through)."""
    names = tuple(sorted(values))
    rowid = returning == "id" and _sqlite(conn)
    sql = _insert_sql(table, names) + (f" RETURNING {returning}" if returning and not rowid else "")
    cursor = execute(conn, sql, values)
    if rowid:
        return cursor.lastrowid
    return cursor.fetchone()[0] if returning else None


@functools.cache
def _update_sql(table: str, names: tuple[str, ...], where: str) -> str:
    _checked(table, names)
    return f"UPDATE {table} SET {', '.join(f'{n} = :v_{n}' for n in names)} WHERE {where}"  # noqa: S608


@functools.cache
def _insert_sql(table: str, names: tuple[str, ...]) -> str:
    _checked(table, names)
    columns, params = ", ".join(names), ", ".join(":" + n for n in names)
    return f"INSERT INTO {table} ({columns}) VALUES ({params})"  # noqa: S608


def _checked(table: str, names: tuple[str, ...]) -> None:
    unknown = set(names) - _COLUMNS.get(table, frozenset())
    if unknown:  # a programming error, never input: identifiers come from this package's code only
        raise ValueError(f"not a column of {table}: {sorted(unknown)}")


def integrity_errors(conn_or_engine: Any) -> tuple[type[BaseException], ...]:
    """What a unique-key conflict raises from the DBAPI (the raw statements do not wrap it)."""
    import sqlalchemy as sa

    dbapi = conn_or_engine.dialect.loaded_dbapi
    return (sa.exc.IntegrityError, dbapi.IntegrityError)
