"""Security events (SPEC H1) and one typed helper per logged event (SPEC H2).

A :class:`SecurityEvent` is what every component hands to an :class:`~cyxwiz.audit.AuditSink`. The model
itself enforces that no secret reaches the log (SPEC D2: "logs unencrypted but contain no secrets"): values
under secret-looking keys and values that look like secrets (JWTs, PEM private keys, bearer credentials)
are replaced by ``"[redacted]"`` wherever they appear in ``details``, and secret-looking values are
redacted from the free-text fields too. Redaction rather than refusal, because the log is written from
request handlers and a security event must never be lost over a badly named field.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from cyxwiz.audit.redaction import REDACTED, redact, redact_text
from cyxwiz.errors import ValidationError

__all__ = [
    "REDACTED",
    "ActorType",
    "EventType",
    "Outcome",
    "SecurityEvent",
    "access_decision",
    "admin_action",
    "auth_attempt",
    "certificate_rejected",
    "configuration_change",
    "data_access",
    "integrity_alert",
    "job_submitted",
    "key_rotation",
    "make_event",
    "node_registered",
    "payment",
    "presigned_url_issued",
    "presigned_url_used",
    "revocation",
    "token_issued",
    "verification_outcome",
]


class EventType(StrEnum):
    """SPEC H1 event types (spelled as in the spec, so logs from other implementations compare)."""

    AUTHENTICATION = "Authentication"
    AUTHORIZATION = "Authorization"
    DATA_ACCESS = "DataAccess"
    CONFIGURATION = "Configuration"
    PAYMENT = "Payment"


class ActorType(StrEnum):
    USER = "user"
    NODE = "node"
    ADMIN = "admin"
    SERVICE = "service"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"
    ERROR = "error"


class SecurityEvent(BaseModel):
    """One security event (SPEC H1). Immutable; build it with the helpers below."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    #: Unique id of the event: what ``cyxwiz audit prove EVENT_ID`` and escrow memos refer to.
    event_id: str = Field(default_factory=lambda: secrets.token_hex(16), min_length=8, max_length=64)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    event_type: EventType
    actor_id: str = Field(min_length=1, max_length=512)
    actor_type: ActorType
    resource: str = Field(min_length=1, max_length=1024)
    action: str = Field(min_length=1, max_length=128)
    outcome: Outcome
    ip_address: str | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (UTC)")
        return value.astimezone(UTC)

    @field_validator("actor_id", "resource", "action")
    @classmethod
    def _no_secret_text(cls, value: str) -> str:
        return redact_text(value)

    @field_validator("ip_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return str(ipaddress.ip_address(value))

    @field_validator("details", mode="before")
    @classmethod
    def _redact_details(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("details must be a mapping")
        return redact(value)


def make_event(**fields: Any) -> SecurityEvent:
    """Build a :class:`SecurityEvent`, turning pydantic's error into the project's ValidationError."""
    try:
        return SecurityEvent(**fields)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "event"
        raise ValidationError(first["msg"], field=field, rule="H1") from None


def _clean(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``None`` values so records stay small and queries do not see noise."""
    return {k: v for k, v in mapping.items() if v is not None}


def _outcome(success: bool) -> Outcome:
    return Outcome.SUCCESS if success else Outcome.FAILURE


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


# --- helpers, one per SPEC H2 event ---------------------------------------------------------------


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
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.AUTHENTICATION,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=resource,
        action="authenticate",
        outcome=_outcome(success),
        ip_address=ip_address,
        details=_clean(
            {"method": method, "reason": reason, "peer_id": peer_id, "cert_subject": cert_subject}
        ),
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
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.AUTHENTICATION,
        actor_id=issuer,
        actor_type=actor_type,
        resource=f"token:{jti}",
        action="token.issue",
        outcome=Outcome.SUCCESS,
        ip_address=ip_address,
        details=_clean(
            {
                "token_type": token_type,
                "subject": subject,
                "expires_at": _iso(expires_at),
                "jti": jti,
                "audience": aud,
                "scopes": list(scopes),
                "kid": kid,
            }
        ),
    )


def job_submitted(
    *,
    user_id: str,
    job_id: str,
    success: bool = True,
    job_type: str | None = None,
    payment_lamports: int | None = None,
    config: Mapping[str, JsonValue] | None = None,
    reason: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A job submission, accepted or refused (H2: user, job config, payment)."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.DATA_ACCESS,
        actor_id=user_id,
        actor_type=ActorType.USER,
        resource=f"job:{job_id}",
        action="job.submit",
        outcome=_outcome(success),
        ip_address=ip_address,
        details=_clean(
            {
                "job_type": job_type,
                "payment_lamports": payment_lamports,
                "config": dict(config) if config is not None else None,
                "reason": reason,
            }
        ),
    )


def node_registered(
    *,
    node_id: str,
    success: bool = True,
    peer_id: str | None = None,
    cert_subject: str | None = None,
    hardware: Mapping[str, JsonValue] | None = None,
    location: str | None = None,
    reason: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A node registered (H2: node id, hardware, location; A5: PeerID and cert subject)."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.CONFIGURATION,
        actor_id=node_id,
        actor_type=ActorType.NODE,
        resource=f"node:{node_id}",
        action="node.register",
        outcome=_outcome(success),
        ip_address=ip_address,
        details=_clean(
            {
                "peer_id": peer_id,
                "cert_subject": cert_subject,
                "hardware": dict(hardware) if hardware is not None else None,
                "location": location,
                "reason": reason,
            }
        ),
    )


def payment(
    *,
    action: str,
    job_id: str,
    amount_lamports: int,
    actor_id: str = "escrow",
    actor_type: ActorType | str = ActorType.SERVICE,
    success: bool = True,
    source: str | None = None,
    destination: str | None = None,
    tx_signature: str | None = None,
    reason: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A payment transaction (H2: amount, from, to, tx hash). ``action``: escrow.create/release/refund…"""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.PAYMENT,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"job:{job_id}",
        action=action,
        outcome=_outcome(success),
        details=_clean(
            {
                "amount_lamports": amount_lamports,
                "from": source,
                "to": destination,
                "tx_signature": tx_signature,
                "reason": reason,
            }
        ),
    )


def configuration_change(
    *,
    actor_id: str,
    setting: str,
    changes: Mapping[str, tuple[JsonValue, JsonValue]],
    actor_type: ActorType | str = ActorType.ADMIN,
    success: bool = True,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A configuration change (H2: changed fields, old/new values; secret fields are redacted)."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.CONFIGURATION,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"config:{setting}",
        action="config.change",
        outcome=_outcome(success),
        ip_address=ip_address,
        details={"changes": {name: {"old": old, "new": new} for name, (old, new) in changes.items()}},
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
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.AUTHENTICATION,
        actor_id=peer_id or subject or "unknown-peer",
        actor_type=ActorType.ANONYMOUS,
        resource=f"certificate:{serial}" if serial is not None else "certificate",
        action="certificate.verify",
        outcome=Outcome.DENIED,
        ip_address=ip_address,
        details=_clean(
            {
                "reason": reason,
                "rule": rule,
                "subject": subject,
                "serial": str(serial) if serial is not None else None,
                "fingerprint_sha256": fingerprint_sha256,
            }
        ),
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
    event_type = EventType.CONFIGURATION if kind in {"certificate", "node"} else EventType.AUTHENTICATION
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=event_type,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"{kind}:{target}",
        action=f"{kind}.revoke",
        outcome=_outcome(success),
        details=_clean({"reason": reason}),
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
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.AUTHORIZATION,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=resource,
        action=action,
        outcome=Outcome.SUCCESS if allowed else Outcome.DENIED,
        ip_address=ip_address,
        details=_clean({"reason": reason}),
    )


def data_access(
    *,
    actor_id: str,
    actor_type: ActorType | str,
    resource: str,
    action: str,
    success: bool = True,
    details: Mapping[str, JsonValue] | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """Access to job inputs/outputs or archived objects (DataAccess)."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.DATA_ACCESS,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=resource,
        action=action,
        outcome=_outcome(success),
        ip_address=ip_address,
        details=dict(details or {}),
    )


def integrity_alert(*, resource: str, reason: str, at: datetime | None = None) -> SecurityEvent:
    """The audit log itself found tampering (H4): records removed from the open day, say."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.CONFIGURATION,
        actor_id="audit-log",
        actor_type=ActorType.SYSTEM,
        resource=resource,
        action="audit.tamper_detected",
        outcome=Outcome.FAILURE,
        details={"reason": reason},
    )


# --- issue 19 coverage: verification verdicts, presigned data access, admin actions, rotations ------


def verification_outcome(
    *,
    job_id: str,
    passed: bool,
    failed_checks: Sequence[str] = (),
    checks: Sequence[str] = (),
    node_id: str | None = None,
    proof_sha256: str | None = None,
    actor_id: str = "verifier",
    at: datetime | None = None,
) -> SecurityEvent:
    """The verdict on a job's result (F1): pass or fail, with the checks that failed. Its leaf hash is
    what the escrow release/refund memo cites, so the payment and its reason are provably linked."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.DATA_ACCESS,
        actor_id=actor_id,
        actor_type=ActorType.SERVICE,
        resource=f"job:{job_id}",
        action="job.verify",
        outcome=_outcome(passed),
        details=_clean(
            {
                "passed": passed,
                "failed_checks": list(failed_checks),
                "checks": list(checks) or None,
                "node_id": node_id,
                "proof_sha256": proof_sha256,
            }
        ),
    )


def presigned_url_issued(
    *,
    actor_id: str,
    actor_type: ActorType | str,
    key: str,
    method: str,
    expires_in_s: int | None = None,
    job_id: str | None = None,
    sha256: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A presigned object URL was handed out (the URL itself, a bearer credential, is never logged)."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.DATA_ACCESS,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"object:{key}",
        action="object.presign",
        outcome=Outcome.SUCCESS,
        ip_address=ip_address,
        details=_clean({"method": method, "expires_in_s": expires_in_s, "job_id": job_id, "sha256": sha256}),
    )


def presigned_url_used(
    *,
    key: str,
    method: str,
    success: bool,
    status: int | None = None,
    reason: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A presigned URL was presented to the object endpoint: served, or refused (expired, tampered)."""
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.DATA_ACCESS,
        actor_id=ip_address or "presigned-url",
        actor_type=ActorType.ANONYMOUS,
        resource=f"object:{key or '-'}",
        action="object.presigned_use",
        outcome=Outcome.SUCCESS if success else Outcome.DENIED,
        ip_address=ip_address,
        details=_clean({"method": method, "status": status, "reason": reason}),
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
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.CONFIGURATION,
        actor_id=actor_id,
        actor_type=ActorType.ADMIN,
        resource=target,
        action=f"admin.{action}",
        outcome=_outcome(success),
        ip_address=ip_address,
        details=_clean({"reason": reason, **dict(details or {})}),
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
    return make_event(
        timestamp=at or datetime.now(UTC),
        event_type=EventType.CONFIGURATION,
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"{kind}:{new_id or old_id or '-'}",
        action=f"{'certificate' if kind == 'certificate' else 'key'}.rotate",
        outcome=_outcome(success),
        details=_clean(
            {
                "kind": kind,
                "new_id": new_id,
                "old_id": old_id,
                "retired": list(retired) or None,
                "reason": reason,
            }
        ),
    )
