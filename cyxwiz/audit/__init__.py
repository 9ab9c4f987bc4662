"""cyxwiz.audit: security events and the tamper-evident audit log (SPEC H1–H4).

Components take an optional ``audit: AuditSink | None`` and call ``audit.record(events.xxx(...))``::

    from cyxwiz.audit import AuditLog, events

    log = AuditLog.open(Path("/var/log/cyxwiz/audit"), signing_key=Path("audit-signing.key"))
    log.record(events.auth_attempt(actor_id="node-1", actor_type="node", success=False, method="mtls"))
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from cyxwiz.audit import events
from cyxwiz.audit.archive import AuditArchive, LocalDirectoryArchive, ObjectStoreArchive
from cyxwiz.audit.events import ActorType, EventType, Outcome, SecurityEvent
from cyxwiz.audit.log import AuditLog, Receipt
from cyxwiz.audit.proofs import leaf_hash_of


@runtime_checkable
class AuditSink(Protocol):
    """Anything that records security events: :class:`AuditLog`, :class:`MemorySink`, a fan-out."""

    def record(self, event: SecurityEvent) -> object: ...


class MemorySink:
    """Keeps events in a list: for embedding in tests of other components and for fan-out previews."""

    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []
        self._lock = threading.Lock()

    def record(self, event: SecurityEvent) -> None:
        with self._lock:
            self.events.append(event)

    def of_action(self, action: str) -> list[SecurityEvent]:
        return [e for e in self.events if e.action == action]


__all__ = [
    "ActorType",
    "AuditArchive",
    "AuditLog",
    "AuditSink",
    "EventType",
    "LocalDirectoryArchive",
    "MemorySink",
    "ObjectStoreArchive",
    "Outcome",
    "Receipt",
    "SecurityEvent",
    "events",
    "leaf_hash_of",
]
