"""The few statements of an escrow move, run on the DBAPI cursor of a SQLAlchemy transaction (F2 kept).

An escrow pair runs about fifteen statements; through SQLAlchemy Core each one is built, cache-keyed and
compiled again, about 1 ms apiece on the reference machine, more than LiteSVM takes for the transactions
themselves. These are the same statements as text, written once with ``:name`` parameters (sqlite3's
``named`` style, rewritten once to ``%(name)s`` for psycopg), executed on the cursor of the transaction
the store opened with SQLAlchemy: commit, rollback, the group fsync and every compare-and-set rule stay
where they were. Values are bound as SQLAlchemy would store them (SQLite: UTC times as text), so the
store's other, colder reads through SQLAlchemy see the same rows.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection

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
_SELECT_STATE = f"SELECT state FROM {escrows.name} WHERE job_id = :job_id"  # noqa: S608


@functools.cache
def _styled(sql: str, sqlite: bool) -> str:
    # sqlite3 takes ``:name`` itself (whatever paramstyle SQLAlchemy uses with it); psycopg ``%(name)s``
    return sql if sqlite else re.sub(r":(\w+)", r"%(\1)s", sql)


def _sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def _bind(conn: Connection, values: dict[str, Any]) -> dict[str, Any]:
    if not _sqlite(conn):
        return values
    # SQLAlchemy's SQLite DateTime stores the UTC wall time as text: the same here, so both read alike.
    return {
        k: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v
        for k, v in values.items()
    }


def execute(conn: Connection, sql: str, values: dict[str, Any]) -> Any:
    """Run ``sql`` (``:name`` parameters) on ``conn``'s own DBAPI connection, inside its transaction."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(_styled(sql, _sqlite(conn)), _bind(conn, values))
    return cursor


def select_escrow(conn: Connection, job_id: str) -> dict[str, Any] | None:
    row = execute(conn, _SELECT_ESCROW, {"job_id": job_id}).fetchone()
    if row is None:
        return None
    result = dict(zip(ESCROW_COLUMNS, row, strict=True))
    result["amount"] = int(Decimal(str(result["amount"])))
    if _sqlite(conn):
        for name in _TIMES:
            if isinstance(result[name], str):
                result[name] = datetime.fromisoformat(result[name])
    return result


def escrow_state(conn: Connection, job_id: str) -> str | None:
    row = execute(conn, _SELECT_STATE, {"job_id": job_id}).fetchone()
    return None if row is None else str(row[0])


def update_escrow(conn: Connection, job_id: str, state: str, values: dict[str, Any]) -> int:
    """``UPDATE`` the escrow's ``values`` where it still is in ``state`` (the compare-and-set); rowcount."""
    names = sorted(values)
    sql = _update_sql(escrows.name, tuple(names), "job_id = :w_job_id AND state = :w_state")
    params = {f"v_{k}": values[k] for k in names} | {"w_job_id": job_id, "w_state": state}
    return int(execute(conn, sql, params).rowcount)


def update_intent(conn: Connection, intent_id: int, values: dict[str, Any], *, prepared: bool) -> int:
    """``UPDATE`` one intent row (only while still ``prepared`` when ``prepared``); rowcount."""
    names = sorted(values)
    where = "id = :w_id AND status = 'prepared'" if prepared else "id = :w_id"
    params = {f"v_{k}": values[k] for k in names} | {"w_id": intent_id}
    return int(execute(conn, _update_sql(intents.name, tuple(names), where), params).rowcount)


def insert(conn: Connection, table: str, values: dict[str, Any], *, returning: str | None = None) -> Any:
    names = tuple(sorted(values))
    sql = _insert_sql(table, names) + (f" RETURNING {returning}" if returning else "")
    cursor = execute(conn, sql, values)
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
