"""Audit hooks (SPEC H2) through :mod:`cyxwiz.audit.events`. Nothing here ever receives a token or key.

The audit package (pydantic) is imported only when a sink is configured, keeping plain verification and
``cyxwiz --help`` light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink
    from cyxwiz.tokens.issuer import IssuedToken


def token_issued(audit: AuditSink | None, issued: IssuedToken, *, issuer: str, audience: str) -> None:
    if audit is None:
        return
    from cyxwiz.audit import events

    audit.record(
        events.token_issued(
            subject=issued.subject,
            token_type=issued.kind.value,
            expires_at=issued.expires_at,
            jti=issued.jti,
            issuer=issuer,
            audience=audience,
            scopes=list(issued.claims.get("scope", [])),
            kid=issued.kid,
        )
    )


def refresh_reuse(audit: AuditSink | None, *, subject: str, role: str, session_id: str) -> None:
    """A reused refresh token: a failed authentication and the revocation of its whole family (B5)."""
    if audit is None:
        return
    from cyxwiz.audit import events

    audit.record(
        events.auth_attempt(
            actor_id=subject,
            actor_type=role,
            success=False,
            method="refresh-token",
            reason="refresh token reuse",
            resource=f"token-family:{session_id}",
        )
    )
    audit.record(
        events.revocation(
            actor_id="token-service",
            actor_type="system",
            kind="token-family",
            target=session_id,
            reason="refresh token reuse",
        )
    )


def session_revoked(
    audit: AuditSink | None, *, actor_id: str, actor_type: str, session_id: str, reason: str
) -> None:
    if audit is None:
        return
    from cyxwiz.audit import events

    audit.record(
        events.revocation(
            actor_id=actor_id, actor_type=actor_type, kind="token-family", target=session_id, reason=reason
        )
    )
