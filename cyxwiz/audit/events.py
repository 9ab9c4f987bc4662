"""Security events (SPEC H1) and one typed builder per logged event (SPEC H2), in one namespace.

Components write ``audit.record(events.auth_attempt(...))``. The model, its enums and the catalogue of
event types and actions are in :mod:`cyxwiz.audit.catalogue`; the builders are in
:mod:`cyxwiz.audit.identity_events` (who may act) and :mod:`cyxwiz.audit.resource_events` (what was
acted on). This module only gathers them, so callers need one import.
"""

from __future__ import annotations

from cyxwiz.audit.catalogue import ActorType, EventType, Outcome, SecurityEvent, make_event
from cyxwiz.audit.identity_events import (
    access_decision,
    admin_action,
    auth_attempt,
    certificate_rejected,
    key_rotation,
    revocation,
    token_issued,
)
from cyxwiz.audit.redaction import REDACTED
from cyxwiz.audit.resource_events import (
    configuration_change,
    data_access,
    integrity_alert,
    job_submitted,
    node_registered,
    payment,
    presigned_url_issued,
    presigned_url_used,
    verification_outcome,
)

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
