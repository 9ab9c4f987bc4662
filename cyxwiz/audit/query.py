"""Filtering events read back from the log (``cyxwiz audit tail`` / ``query``)."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cyxwiz.audit.events import EventType, Outcome
from cyxwiz.audit.reader import StoredEvent, iter_events
from cyxwiz.errors import ValidationError

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, *, field: str, now: datetime | None = None) -> datetime:
    """ISO date/datetime (naive = UTC) or a relative age such as ``15m``, ``2h``, ``7d``."""
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        parsed = datetime.fromisoformat(text) if "T" in text or " " in text else None
        if parsed is None:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
    except ValueError:
        raise ValidationError(
            f"{value!r} is not an ISO date/time or an age like 2h",
            field=field,
            hint="e.g. 2026-11-22T10:00 or 7d",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class EventFilter:
    event_type: EventType | None = None
    actor: str | None = None
    outcome: Outcome | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, stored: StoredEvent) -> bool:
        event = stored.event
        checks = (
            self.event_type is None or event.get("event_type") == self.event_type.value,
            self.actor is None or event.get("actor_id") == self.actor,
            self.outcome is None or event.get("outcome") == self.outcome.value,
            self.action is None or str(event.get("action", "")).startswith(self.action),
        )
        if not all(checks):
            return False
        if self.since is None and self.until is None:
            return True
        stamp = stored.timestamp
        if stamp is None or stamp.tzinfo is None:
            return False
        return (self.since is None or stamp >= self.since) and (self.until is None or stamp < self.until)


def _filtered(path: Path, flt: EventFilter, errors: list[str] | None) -> Iterable[StoredEvent]:
    return (e for e in iter_events(path, errors=errors) if flt.matches(e))


def query(
    path: Path, flt: EventFilter, *, limit: int | None = None, errors: list[str] | None = None
) -> list[StoredEvent]:
    """Matching events, oldest first, at most ``limit`` (unreadable files noted in ``errors`` if given)."""
    out: list[StoredEvent] = []
    for stored in _filtered(path, flt, errors):
        out.append(stored)
        if limit is not None and len(out) >= limit:
            break
    return out


def tail(path: Path, flt: EventFilter, *, count: int, errors: list[str] | None = None) -> list[StoredEvent]:
    """The last ``count`` matching events, oldest first."""
    return list(deque(_filtered(path, flt, errors), maxlen=count))
