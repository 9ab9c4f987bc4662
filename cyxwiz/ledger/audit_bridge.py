"""Payment events for the audit log (SPEC H2: payment transactions are logged with amount, from, to, tx).

Recorded after the move is committed (or definitively refused), so an audit failure never leaves an
escrow half-moved; it surfaces to the caller as the audit package's own error. Details never carry keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink


def record_payment(
    sink: AuditSink,
    *,
    action: str,
    job_id: str,
    success: bool,
    amount: int,
    source: str | None = None,
    destination: str | None = None,
    tx_signature: str | None = None,
    reason: str | None = None,
) -> None:
    from cyxwiz.audit import events

    sink.record(
        events.payment(
            action=f"escrow.{action}",
            job_id=job_id,
            amount_lamports=amount,
            actor_id="escrow-ledger",
            success=success,
            source=source,
            destination=destination,
            tx_signature=tx_signature,
            reason=reason,
        )
    )
