"""SQL replay cache and refresh-family store (SQLAlchemy 2; SQLite embedded, PostgreSQL in production).

One :class:`SqlTokenStore` serves as both :class:`~cyxwiz.tokens.replay.ReplayCache` and
:class:`~cyxwiz.tokens.refresh.RefreshStore`, so every coordinator/gateway process shares one view.
Times are stored as integer epoch seconds: identical on both databases, no time-zone conversions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from cyxwiz.errors import ConfigError
from cyxwiz.tokens.refresh import Consumed

metadata = MetaData()

jti_table = Table(
    "cyxwiz_token_jti",
    metadata,
    Column("jti", String(128), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
)
refresh_table = Table(
    "cyxwiz_refresh_token",
    metadata,
    Column("jti", String(128), primary_key=True),
    Column("session_id", String(128), nullable=False, index=True),
    Column("subject", String(128), nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("used_at", BigInteger, nullable=True),
)
session_table = Table(
    "cyxwiz_token_session",
    metadata,
    Column("session_id", String(128), primary_key=True),
    Column("revoked_at", BigInteger, nullable=True),
    Column("reason", String(200), nullable=True),
)

#: Purge expired jti rows every this many inserts, so the table stays bounded without a separate job.
PURGE_EVERY = 1000


def _ts(value: datetime) -> int:
    return int(value.timestamp())


class SqlTokenStore:
    """Replay cache + refresh store on one database. Thread-safe (an Engine per store)."""

    def __init__(self, *, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError("token store supports sqlite and postgresql", field="url", rule="B5")
        self.engine = engine
        self._inserts = 0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, create: bool = True, **engine_options: Any) -> SqlTokenStore:
        store = cls(engine=create_engine(url, **engine_options))
        if create:
            store.create_schema()
        return store

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def _insert_ignore(self, table: Table, values: Mapping[str, Any]) -> Any:
        # ON CONFLICT DO NOTHING: a duplicate is an answer ("seen"), not an error that aborts the transaction.
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).values(**values).on_conflict_do_nothing()

    # -- ReplayCache -----------------------------------------------------------------------------

    def remember(self, jti: str, *, expires_at: datetime, now: datetime) -> bool:
        with self._lock:
            self._inserts += 1
            purge = self._inserts % PURGE_EVERY == 0
        if purge:
            self.purge(now=now)
        with self.engine.begin() as conn:
            # RETURNING rather than rowcount: psycopg 3 reports -1 for INSERT ... ON CONFLICT DO NOTHING.
            stmt = self._insert_ignore(jti_table, {"jti": jti, "expires_at": _ts(expires_at)})
            return conn.execute(stmt.returning(jti_table.c.jti)).first() is not None

    # -- RefreshStore ----------------------------------------------------------------------------

    def add(self, *, jti: str, session_id: str, subject: str, expires_at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignore(session_table, {"session_id": session_id}))
            conn.execute(
                insert(refresh_table).values(
                    jti=jti, session_id=session_id, subject=subject, expires_at=_ts(expires_at)
                )
            )

    def consume(self, *, jti: str, session_id: str, now: datetime) -> Consumed:
        with self.engine.begin() as conn:
            # Lock the family row: concurrent refreshes of one family are serialised (PostgreSQL;
            # SQLite serialises writers anyway).
            family = conn.execute(
                select(session_table.c.revoked_at)
                .where(session_table.c.session_id == session_id)
                .with_for_update()
            ).first()
            if family is None:
                return Consumed.UNKNOWN
            if family.revoked_at is not None:
                return Consumed.REVOKED
            marked = conn.execute(
                update(refresh_table)
                .where(
                    refresh_table.c.jti == jti,
                    refresh_table.c.session_id == session_id,
                    refresh_table.c.used_at.is_(None),
                )
                .values(used_at=_ts(now))
                .returning(refresh_table.c.jti)
            ).first()
            if marked is not None:
                return Consumed.OK
            known = conn.execute(
                select(refresh_table.c.jti).where(
                    refresh_table.c.jti == jti, refresh_table.c.session_id == session_id
                )
            ).first()
            if known is None:
                return Consumed.UNKNOWN
            self._revoke(conn, session_id, reason="refresh token reuse", now=now)
            return Consumed.REUSED

    def revoke_session(self, session_id: str, *, reason: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignore(session_table, {"session_id": session_id}))
            self._revoke(conn, session_id, reason=reason, now=now)

    @staticmethod
    def _revoke(conn: Any, session_id: str, *, reason: str, now: datetime) -> None:
        conn.execute(
            update(session_table)
            .where(session_table.c.session_id == session_id, session_table.c.revoked_at.is_(None))
            .values(revoked_at=_ts(now), reason=reason[:200])
        )

    def is_session_revoked(self, session_id: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(session_table.c.revoked_at).where(session_table.c.session_id == session_id)
            ).first()
        return row is not None and row.revoked_at is not None

    # -- both ------------------------------------------------------------------------------------

    def purge(self, *, now: datetime) -> int:
        """Delete expired jti and refresh-token rows (revoked families are kept: they stay revoked)."""
        cutoff = _ts(now)
        with self.engine.begin() as conn:
            a = conn.execute(
                delete(jti_table).where(jti_table.c.expires_at < cutoff).returning(jti_table.c.jti)
            )
            b = conn.execute(
                delete(refresh_table)
                .where(refresh_table.c.expires_at < cutoff)
                .returning(refresh_table.c.jti)
            )
            return len(a.all()) + len(b.all())
