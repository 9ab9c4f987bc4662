"""Sessions and refresh families in the coordinator store (SPEC B5): revocable sessions, the certificate
each was opened with (revoking it kills the family), one-shot refresh tokens with reuse detection."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cyxwiz.coordinator.records import now as _now
from cyxwiz.coordinator.tables import refresh_tokens, session_certs, sessions


class SessionRows:
    """Mixed into :class:`~cyxwiz.coordinator.store.CoordinatorStore`, which provides transactions."""

    def _tx(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def create_session(self, *, session_id: str, principal_kind: str, principal_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                sessions.insert().values(
                    session_id=session_id,
                    principal_kind=principal_kind,
                    principal_id=principal_id,
                    revoked=False,
                    created_at=_now(),
                )
            )

    def is_session_revoked(self, session_id: str) -> bool:
        """Unknown sessions count as revoked: only sessions this coordinator opened are valid."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(sessions.c.revoked).where(sessions.c.session_id == session_id)
            ).first()
        return row is None or bool(row[0])

    def revoke_session(self, session_id: str) -> None:
        with self._tx() as conn:
            conn.execute(sessions.update().where(sessions.c.session_id == session_id).values(revoked=True))

    def revoke_sessions_of(self, principal_id: str) -> int:
        with self._tx() as conn:
            done = conn.execute(
                sessions.update()
                .where(sessions.c.principal_id == principal_id, sessions.c.revoked.is_(False))
                .values(revoked=True)
            )
            return int(done.rowcount)

    def bind_session_cert(self, *, session_id: str, issuer: str, serial: int) -> None:
        with self._tx() as conn:
            conn.execute(
                session_certs.insert().values(
                    session_id=session_id, issuer=issuer, serial=format(serial, "x")
                )
            )

    def revoke_sessions_of_certs(
        self, revoked: frozenset[tuple[str, int]], *, dead_issuers: frozenset[str] = frozenset()
    ) -> list[str]:
        """Revoke every live session opened with a certificate in ``revoked`` ((issuer, serial) pairs) or
        issued by a CA in ``dead_issuers`` (subject DNs of revoked CAs: their leaves die with them)."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(session_certs.c.session_id, session_certs.c.issuer, session_certs.c.serial)
                .join(sessions, sessions.c.session_id == session_certs.c.session_id)
                .where(sessions.c.revoked.is_(False))
            ).all()
            doomed = [
                r.session_id
                for r in rows
                if (r.issuer, int(r.serial, 16)) in revoked or r.issuer in dead_issuers
            ]
            if doomed:
                conn.execute(sessions.update().where(sessions.c.session_id.in_(doomed)).values(revoked=True))
        return doomed

    def add_refresh(self, *, jti: str, session_id: str, expires_at: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                refresh_tokens.insert().values(
                    jti=jti, session_id=session_id, used=False, expires_at=expires_at
                )
            )

    def consume_refresh(self, *, jti: str, session_id: str) -> bool:
        """Mark a refresh token used. False = it was used before (or never ours): a reuse (B5)."""
        with self._tx() as conn:
            done = conn.execute(
                refresh_tokens.update()
                .where(
                    refresh_tokens.c.jti == jti,
                    refresh_tokens.c.session_id == session_id,
                    refresh_tokens.c.used.is_(False),
                )
                .values(used=True)
            )
            return done.rowcount == 1
