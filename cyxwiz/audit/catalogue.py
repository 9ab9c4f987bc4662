"""What a security event is (SPEC H1) and which ones the services log (SPEC H2).

A :class:`SecurityEvent` is what every component hands to an :class:`~cyxwiz.audit.AuditSink`. The model
itself enforces that no secret reaches the log (SPEC D2: "logs unencrypted but contain no secrets"): values
under secret-looking keys and values that look like secrets (JWTs, PEM private keys, bearer credentials)
are replaced by ``"[redacted]"`` wherever they appear in ``details``, and secret-looking values are
redacted from the free-text fields too. Redaction rather than refusal, because the log is written from
request handlers and a security event must never be lost over a badly named field.

The catalogue (:class:`Kind` constants) fixes each logged event's H1 type and action in one table, so
two builders cannot file the same action under different types; the typed builders that fill in actor,
resource and details live in :mod:`cyxwiz.audit.events`.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from cyxwiz.audit.redaction import redact, redact_text
from cyxwiz.errors import ValidationError


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
    """One security event (SPEC H1). Immutable; build it with the helpers in :mod:`cyxwiz.audit.events`."""

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


def clean(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``None`` values so records stay small and queries do not see noise."""
    return {k: v for k, v in mapping.items() if v is not None}


def outcome_of(success: bool) -> Outcome:
    return Outcome.SUCCESS if success else Outcome.FAILURE


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Kind:
    """One row of the catalogue: an event's H1 type and its action (``{}`` is filled in by the builder
    where the action names a variable part: the payment step, the admin verb, the revoked kind)."""

    event_type: EventType
    action: str

    def emit(
        self,
        *,
        actor_id: str,
        actor_type: ActorType | str,
        resource: str,
        outcome: Outcome,
        details: Mapping[str, JsonValue],
        ip_address: str | None = None,
        at: datetime | None = None,
        part: str = "",
    ) -> SecurityEvent:
        """The event of this kind; ``at`` defaults to now, ``part`` fills the action's ``{}``."""
        return make_event(
            timestamp=at or datetime.now(UTC),
            event_type=self.event_type,
            actor_id=actor_id,
            actor_type=actor_type,
            resource=resource,
            action=self.action.format(part),
            outcome=outcome,
            ip_address=ip_address,
            details=details,
        )


# --- the catalogue: one row per SPEC H2 event (and the issue 19 additions) ------------------------------

AUTH_ATTEMPT = Kind(EventType.AUTHENTICATION, "authenticate")
TOKEN_ISSUED = Kind(EventType.AUTHENTICATION, "token.issue")
JOB_SUBMITTED = Kind(EventType.DATA_ACCESS, "job.submit")
NODE_REGISTERED = Kind(EventType.CONFIGURATION, "node.register")
PAYMENT = Kind(EventType.PAYMENT, "{}")
CONFIGURATION_CHANGE = Kind(EventType.CONFIGURATION, "config.change")
CERTIFICATE_REJECTED = Kind(EventType.AUTHENTICATION, "certificate.verify")
#: Revoking a certificate or a node changes who may join (Configuration); a token, who may call.
REVOCATION_OF_PARTY = Kind(EventType.CONFIGURATION, "{}.revoke")
REVOCATION_OF_TOKEN = Kind(EventType.AUTHENTICATION, "{}.revoke")
ACCESS_DECISION = Kind(EventType.AUTHORIZATION, "{}")
DATA_ACCESS = Kind(EventType.DATA_ACCESS, "{}")
INTEGRITY_ALERT = Kind(EventType.CONFIGURATION, "audit.tamper_detected")
VERIFICATION_OUTCOME = Kind(EventType.DATA_ACCESS, "job.verify")
PRESIGNED_URL_ISSUED = Kind(EventType.DATA_ACCESS, "object.presign")
PRESIGNED_URL_USED = Kind(EventType.DATA_ACCESS, "object.presigned_use")
ADMIN_ACTION = Kind(EventType.CONFIGURATION, "admin.{}")
KEY_ROTATION = Kind(EventType.CONFIGURATION, "key.rotate")
CERTIFICATE_ROTATION = Kind(EventType.CONFIGURATION, "certificate.rotate")
