"""Refresh-token rotation with family revocation (SPEC B5).

A login starts a *family* (its id is the ``session_id``). Every refresh consumes the presented refresh
token and returns a new pair; presenting an already-consumed refresh token means two parties hold it (a
thief and the owner), so the whole family is revoked: both lose it, and session tokens of that session
are refused by verifiers given the store as ``revocations``. The reuse is written to the audit log.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from cyxwiz.errors import TokenError
from cyxwiz.tokens import _audit
from cyxwiz.tokens.binding import PeerCert
from cyxwiz.tokens.errors import RefreshReuseError, TokenRevokedError
from cyxwiz.tokens.issuer import IssuedToken, TokenIssuer, new_id
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink


class Consumed(enum.Enum):
    OK = "ok"
    REUSED = "reused"  # the store has revoked the family in the same step
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class RefreshStore(Protocol):
    def add(self, *, jti: str, session_id: str, subject: str, expires_at: datetime) -> None:
        """Record a newly issued refresh token in its family (creating the family on first use)."""
        ...

    def consume(self, *, jti: str, session_id: str, now: datetime) -> Consumed:
        """Atomically mark ``jti`` used; on a second use revoke the family and answer REUSED."""
        ...

    def revoke_session(self, session_id: str, *, reason: str, now: datetime) -> None: ...

    def is_session_revoked(self, session_id: str) -> bool: ...

    def purge(self, *, now: datetime) -> int:
        """Drop refresh tokens past their expiry (families stay: a revoked session stays revoked)."""
        ...


@dataclass
class _Entry:
    session_id: str
    expires_at: datetime
    used: bool = False


class InMemoryRefreshStore:
    def __init__(self) -> None:
        self._tokens: dict[str, _Entry] = {}
        self._revoked: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, *, jti: str, session_id: str, subject: str, expires_at: datetime) -> None:
        with self._lock:
            self._tokens[jti] = _Entry(session_id=session_id, expires_at=expires_at)

    def consume(self, *, jti: str, session_id: str, now: datetime) -> Consumed:
        with self._lock:
            if session_id in self._revoked:
                return Consumed.REVOKED
            entry = self._tokens.get(jti)
            if entry is None or entry.session_id != session_id:
                return Consumed.UNKNOWN
            if entry.used:
                self._revoked[session_id] = "refresh token reuse"
                return Consumed.REUSED
            entry.used = True
            return Consumed.OK

    def revoke_session(self, session_id: str, *, reason: str, now: datetime) -> None:
        with self._lock:
            self._revoked.setdefault(session_id, reason)

    def is_session_revoked(self, session_id: str) -> bool:
        return session_id in self._revoked

    def purge(self, *, now: datetime) -> int:
        with self._lock:
            gone = [jti for jti, e in self._tokens.items() if e.expires_at < now]
            for jti in gone:
                del self._tokens[jti]
            return len(gone)


@dataclass(frozen=True)
class TokenPair:
    session: IssuedToken
    refresh: IssuedToken


class SessionManager:
    """Login, refresh (rotating) and logout on top of an issuer, a verifier and a :class:`RefreshStore`."""

    def __init__(
        self,
        *,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        store: RefreshStore,
        audit: AuditSink | None = None,
    ) -> None:
        self.issuer = issuer
        self.verifier = verifier
        self.store = store
        self.audit = audit if audit is not None else issuer.audit

    def login(
        self,
        *,
        user_id: str | None = None,
        node_id: str | None = None,
        role: str | None = None,
        scopes: list[str] | None = None,
        cert: PeerCert | None = None,
    ) -> TokenPair:
        """Start a session (a new refresh family) for an already-authenticated principal."""
        return self._pair(
            session_id=new_id(), user_id=user_id, node_id=node_id, role=role, scopes=scopes, cert=cert
        )

    def refresh(self, refresh_token: str, *, peer_cert: PeerCert | None = None) -> TokenPair:
        """Consume ``refresh_token`` and return a new session + refresh pair (B5 rotation).

        Raises :class:`RefreshReuseError` when the token was already used (the family is revoked and the
        event audited), :class:`TokenRevokedError` for a revoked family, or any verification error."""
        verified = self.verifier.verify(
            refresh_token, kind=TokenKind.REFRESH, peer_cert=peer_cert, audience=self.issuer.issuer
        )
        session_id = verified.session_id
        if session_id is None:  # validate_claims guarantees it; kept for the type checker
            raise TokenError("refresh token without session_id", field="session_id", rule="B5")
        result = self.store.consume(jti=verified.jti, session_id=session_id, now=self.verifier.clock())
        if result is Consumed.REUSED:
            _audit.refresh_reuse(
                self.audit, subject=verified.subject, role=verified.role, session_id=session_id
            )
            raise RefreshReuseError(
                "refresh token reused: the whole session was revoked", field="jti", rule="B5"
            )
        if result is Consumed.REVOKED:
            raise TokenRevokedError("the session was revoked", field="session_id", rule="B5")
        if result is Consumed.UNKNOWN:
            raise TokenRevokedError("refresh token not known to this store", field="jti", rule="B5")
        return self._pair(
            session_id=session_id,
            user_id=verified.user_id,
            node_id=verified.node_id,
            role=verified.role,
            scopes=sorted(verified.scopes),
            cert=peer_cert if verified.cert_thumbprint is not None else None,
        )

    def logout(
        self, session_id: str, *, actor_id: str, actor_type: str = "user", reason: str = "logout"
    ) -> None:
        """Revoke a session's refresh family (logout, or an admin cutting a stolen session off)."""
        self.store.revoke_session(session_id, reason=reason, now=self.verifier.clock())
        _audit.session_revoked(
            self.audit, actor_id=actor_id, actor_type=actor_type, session_id=session_id, reason=reason
        )

    def _pair(
        self,
        *,
        session_id: str,
        user_id: str | None,
        node_id: str | None,
        role: str | None,
        scopes: list[str] | None,
        cert: PeerCert | None,
    ) -> TokenPair:
        session = self.issuer.session(
            user_id=user_id, node_id=node_id, role=role, scopes=scopes, session_id=session_id, cert=cert
        )
        refresh = self.issuer.refresh(
            session_id=session_id,
            user_id=user_id,
            node_id=node_id,
            role=role,
            scopes=sorted(session.claims["scope"]),
            cert=cert,
        )
        self.store.add(
            jti=refresh.jti, session_id=session_id, subject=refresh.subject, expires_at=refresh.expires_at
        )
        return TokenPair(session=session, refresh=refresh)
