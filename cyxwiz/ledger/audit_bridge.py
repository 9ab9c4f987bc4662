"""Payment events for the audit log (SPEC H2: payment transactions are logged).

Uses ``cyxwiz.audit.events.payment`` when the audit package provides it; before that lands, a plain
dict with the SecurityEvent fields is handed to the sink so nothing is lost. Details never carry keys.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any


def record_payment(sink: object, *, action: str, job_id: str, outcome: str, details: dict[str, Any]) -> None:
    clean = {k: v for k, v in details.items() if v is not None}
    try:
        events = importlib.import_module("cyxwiz.audit.events")
        factory = events.payment
    except (ModuleNotFoundError, AttributeError):
        event: object = {
            "timestamp": datetime.now(UTC).isoformat(),
            "event_type": "Payment",
            "actor_id": "escrow-ledger",
            "actor_type": "service",
            "resource": f"escrow:{job_id}",
            "action": f"escrow.{action}",
            "outcome": outcome,
            "ip_address": None,
            "details": clean,
        }
    else:
        event = factory(
            actor_id="escrow-ledger",
            job_id=job_id,
            action=f"escrow.{action}",
            outcome=outcome,
            details=clean,
        )
    sink.record(event)  # type: ignore[attr-defined]
