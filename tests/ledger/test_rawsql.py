"""The moves' raw statements store what SQLAlchemy stores, and their one writing connection never reads
stale pages (F2: the same rows and compare-and-sets, in less CPU)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from cyxwiz.ledger import rawsql
from cyxwiz.ledger.store import EscrowStore, escrows


def test_times_are_bound_as_sqlalchemy_binds_them() -> None:
    dialect = sqlite.dialect()
    bind = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    for value in (
        dt.datetime(
            2026, 11, 30, 16, 1, 2, tzinfo=dt.UTC
        ),  # no microseconds: still written, as SQLAlchemy does
        dt.datetime(2026, 11, 30, 16, 1, 2, 5, tzinfo=dt.UTC),
        dt.datetime(9, 1, 2, 3, 4, 5, 999_999, tzinfo=dt.UTC),
    ):
        assert rawsql._sqlite_time(value) == bind(value)
    shifted = dt.datetime(2026, 11, 30, 18, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert rawsql._sqlite_time(shifted) == "2026-11-30 16:01:02.000000"  # stored as UTC wall time


def _row(job_id: str) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {
        "job_id": job_id, "state": "locked", "amount": 5, "mint": "m", "user_wallet": "u",
        "user_token_account": "t", "escrow_account": f"e-{job_id}", "created_at": now, "updated_at": now,
    }  # fmt: skip


def test_writers_share_one_connection_and_see_other_connections_writes(tmp_path: Path) -> None:
    store = EscrowStore.open(f"sqlite:///{tmp_path / 'escrows.db'}")
    pool = store._fast
    assert pool is not None
    try:
        with pool.transaction() as first:
            rawsql.insert(first, escrows.name, _row("job-1"))
            with pool.transaction() as nested:  # re-entered on this thread: never the open transaction's
                assert nested.driver_connection is not first.driver_connection
        with pool.transaction() as second:
            assert second.driver_connection is first.driver_connection
            assert rawsql.select_escrow(second, "job-1") is not None  # warm the writer's page cache
        with store._engine.begin() as other:  # another connection (another process alike) moves the row
            other.execute(sa.update(escrows).where(escrows.c.job_id == "job-1").values(amount=7))
        with pool.transaction() as third:
            row = rawsql.select_escrow(third, "job-1")
        assert row is not None and row["amount"] == 7  # its cache was dropped, not read stale
    finally:
        store.dispose()


def test_a_read_uses_the_writing_connection_only_when_no_writer_holds_it(tmp_path: Path) -> None:
    store = EscrowStore.open(f"sqlite:///{tmp_path / 'escrows.db'}")
    pool = store._fast
    assert pool is not None
    try:
        with pool.transaction() as writer:
            rawsql.insert(writer, escrows.name, _row("job-1"))
            with pool.reading() as inside:  # a read inside the open transaction: another connection,
                assert inside.driver_connection is not writer.driver_connection
                assert rawsql.select_escrow(inside, "job-1") is None  # which sees only what is committed
        with pool.reading() as idle:
            assert idle.driver_connection is writer.driver_connection
            assert rawsql.select_escrow(idle, "job-1") is not None
        assert store.get("job-1")["amount"] == 5
    finally:
        store.dispose()
