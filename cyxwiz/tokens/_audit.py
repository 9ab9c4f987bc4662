"""Audit hooks (SPEC H2). The sink is optional; nothing here ever receives a token or key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyxwiz.tokens.issuer import IssuedToken


def _record(audit: object | None, event: Any) -> None:
    if audit is not None:
        audit.record(event)  # type: ignore[attr-defined]


def token_issued(audit: object | None, issued: IssuedToken, *, issuer: str, audience: str) -> None:
    if audit is None:
        return
    _record(
        audit,
        {
            "event_type": "Authentication",
            "action": "token_issued",
            "actor_id": issued.subject,
            "token_type": issued.kind.value,
            "jti": issued.jti,
            "kid": issued.kid,
            "expires_at": issued.expires_at.isoformat(),
            "issuer": issuer,
            "audience": audience,
        },
    )


def refresh_reuse(audit: object | None, *, subject: str, session_id: str, jti: str) -> None:
    if audit is None:
        return
    _record(
        audit,
        {
            "event_type": "Authentication",
            "action": "refresh_reuse",
            "actor_id": subject,
            "outcome": "denied",
            "session_id": session_id,
            "jti": jti,
            "reason": "refresh token reused: family revoked",
        },
    )
