"""Builders of the identity events (SPEC H2): who authenticated, what was minted, rejected, revoked,
rotated, allowed or done by an administrator. Re-exported by :mod:`cyxwiz.audit.events`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import JsonValue

from cyxwiz.audit import catalogue as cat
from cyxwiz.audit.catalogue import ActorType, Outcome, SecurityEvent, clean, iso, outcome_of


def auth_attempt(
    *,
    actor_id: str,
    actor_type: ActorType | str,
    success: bool,
    method: str,
    ip_address: str | None = None,
    reason: str | None = None,
    peer_id: str | None = None,
    cert_subject: str | None = None,
    resource: str = "auth",
    at: datetime | None = None,
) -> SecurityEvent:
    """A login / authentication attempt, successful or not (H2). ``method``: "mtls", "jwt", "password"…"""
    return cat.AUTH_ATTEMPT.emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=resource,
        outcome=outcome_of(success),
        ip_address=ip_address,
        at=at,
        details=clean({"method": method, "reason": reason, "peer_id": peer_id, "cert_subject": cert_subject}),
    )


def token_issued(
    *,
    subject: str,
    token_type: str,
    expires_at: datetime,
    jti: str,
    issuer: str = "coordinator",
    actor_type: ActorType | str = ActorType.SERVICE,
    audience: str | Sequence[str] | None = None,
    scopes: Sequence[str] = (),
    kid: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A token was minted (H2: type, subject, expiry). The token itself is never an argument."""
    aud = [audience] if isinstance(audience, str) else (list(audience) if audience is not None else None)
    details = {
        "token_type": token_type,
        "subject": subject,
        "expires_at": iso(expires_at),
        "jti": jti,
        "audience": aud,
        "scopes": list(scopes),
        "kid": kid,
    }
    return cat.TOKEN_ISSUED.emit(
        actor_id=issuer,
        actor_type=actor_type,
        resource=f"token:{jti}",
        outcome=Outcome.SUCCESS,
        ip_address=ip_address,
        at=at,
        details=clean(details),
    )


def certificate_rejected(
    *,
    reason: str,
    subject: str | None = None,
    serial: int | str | None = None,
    peer_id: str | None = None,
    fingerprint_sha256: str | None = None,
    ip_address: str | None = None,
    rule: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A certificate failed validation (H2). ``reason``: the error code, e.g. "pki-revoked"."""
    details = {
        "reason": reason,
        "rule": rule,
        "subject": subject,
        "serial": str(serial) if serial is not None else None,
        "fingerprint_sha256": fingerprint_sha256,
    }
    return cat.CERTIFICATE_REJECTED.emit(
        actor_id=peer_id or subject or "unknown-peer",
        actor_type=ActorType.ANONYMOUS,
        resource=f"certificate:{serial}" if serial is not None else "certificate",
        outcome=Outcome.DENIED,
        ip_address=ip_address,
        at=at,
        details=clean(details),
    )


def revocation(
    *,
    actor_id: str,
    kind: str,
    target: str,
    reason: str | None = None,
    actor_type: ActorType | str = ActorType.ADMIN,
    success: bool = True,
    at: datetime | None = None,
) -> SecurityEvent:
    """A revocation (H2): ``kind`` "certificate", "token", "token-family" or "node"."""
    row = cat.REVOCATION_OF_PARTY if kind in {"certificate", "node"} else cat.REVOCATION_OF_TOKEN
    return row.emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"{kind}:{target}",
        part=kind,
        outcome=outcome_of(success),
        at=at,
        details=clean({"reason": reason}),
    )


def access_decision(
    *,
    actor_id: str,
    actor_type: ActorType | str,
    resource: str,
    action: str,
    allowed: bool,
    reason: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """An authorization decision (C1, C2): denied requests are the interesting ones."""
    return cat.ACCESS_DECISION.emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=resource,
        part=action,
        outcome=Outcome.SUCCESS if allowed else Outcome.DENIED,
        ip_address=ip_address,
        at=at,
        details=clean({"reason": reason}),
    )


def admin_action(
    *,
    actor_id: str,
    action: str,
    target: str,
    success: bool = True,
    reason: str | None = None,
    details: Mapping[str, JsonValue] | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """An administrator acted (drain/ban/revoke a node, read every job, read the configuration…)."""
    return cat.ADMIN_ACTION.emit(
        actor_id=actor_id,
        actor_type=ActorType.ADMIN,
        resource=target,
        part=action,
        outcome=outcome_of(success),
        ip_address=ip_address,
        at=at,
        details=clean({"reason": reason, **dict(details or {})}),
    )


def key_rotation(
    *,
    kind: str,
    new_id: str | None,
    old_id: str | None = None,
    retired: Sequence[str] = (),
    actor_id: str = "maintenance",
    actor_type: ActorType | str = ActorType.SYSTEM,
    success: bool = True,
    reason: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A key or certificate was rotated. ``kind``: "token-signing-key", "certificate", "audit-key"…"""
    details = {
        "kind": kind,
        "new_id": new_id,
        "old_id": old_id,
        "retired": list(retired) or None,
        "reason": reason,
    }
    return (cat.CERTIFICATE_ROTATION if kind == "certificate" else cat.KEY_ROTATION).emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"{kind}:{new_id or old_id or '-'}",
        outcome=outcome_of(success),
        at=at,
        details=clean(details),
    )
