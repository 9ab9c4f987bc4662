"""The dispute window on the control plane's side (issue 20, ``verification.dispute_window_s``; F1, F2).

:func:`hold_release` replaces the release of a passing job whose spec asks for a window: the verifier's
attestation and the node's wallet go into a hold (:class:`cyxwiz.coordinator.holds.HoldBook`), the
escrow's sweep deadline moves past the window (so no sweep refunds a verified job while it waits), and
the coordinator's job status reads ``held``. :func:`finish_hold` carries out whatever the hold decided
— the window closed undisputed: release; the owner disputed in time: the funds move into the dispute
escrow for the arbiter — and is idempotent, so the lifecycle (waiting in :func:`await_window`) and the
escrow sweep (:func:`settle_holds`, after a crash) can both call it. Plain functions, no Prefect.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from cyxwiz.coordinator.holds import Hold, HoldBook
from cyxwiz.ledger.store import EscrowState
from tasks import services
from tasks.control import JobRequest

#: How often a waiting lifecycle looks at its hold (a dispute ends the wait early).
POLL_S = 1.0
#: Windows up to this long are waited out by the lifecycle run itself; a longer one (days) ends the run
#: with the job ``held`` and the scheduled escrow sweep carries out the decision when the window closes.
WAIT_LIMIT_S = 3600


def book() -> HoldBook:
    return HoldBook(services.control_channel().store.engine)  # type: ignore[attr-defined]


def _audit(action: str, job_id: str, *, success: bool = True, reason: str | None = None) -> None:
    from cyxwiz.ledger.audit_bridge import record_payment

    record_payment(services.audit(), action=action, job_id=job_id, success=success, amount=0, reason=reason)


def hold_release(request: JobRequest, dispatched: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Hold a verified release for the spec's window instead of paying now (F1); returns the settlement."""
    assignment = dispatched["assignment"]
    # The arbiter's replay needs the bound document and the split, kept sealed on the trusted side.
    from tasks.arbiter import seal_case

    seal_case(request.job_id, dispatched)
    closes_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=request.dispute_window_s)
    hold = book().hold(
        job_id=request.job_id,
        user_id=request.user,
        node_wallet=str(assignment["wallet"]),
        attestation=str(report["attestation"]),
        closes_at=closes_at,
    )
    # The escrow stays locked through the window: no sweep may take it for an abandoned job meanwhile.
    margin = dt.timedelta(seconds=services.config().dispatch_margin_s)
    record = services.ledger().assign(
        job_id=request.job_id, node_wallet=hold.node_wallet, deadline=hold.closes_at + margin
    )
    services.control_channel().set_status(request.job_id, "held")
    _audit("hold", request.job_id, reason=f"verified; release held until {hold.closes_at.isoformat()}")
    return {
        "state": "held",
        "closes_at": hold.closes_at.isoformat(),
        "escrow_account": record.escrow_account,
        "report_sha256": None,
        "settle_signature": None,
        "memo": None,
    }


def finish_hold(job_id: str, *, now: dt.datetime | None = None) -> str:
    """Carry out the hold's decision once it has one: ``held`` (window open), ``released`` or
    ``disputed``; each ledger move is a compare-and-set, so a second caller changes nothing."""
    holds = book()
    hold = holds.close(job_id, now=now or dt.datetime.now(dt.UTC))
    if hold.state == "held":
        return "held"
    if hold.state == "settled":
        return str(hold.outcome)
    ledger = services.ledger()
    state = ledger.status(job_id=job_id).state
    movable = state in (EscrowState.LOCKED, EscrowState.SETTLING)
    if hold.state == "releasing":
        if movable:
            ledger.release(job_id=job_id, node_wallet=hold.node_wallet, report=hold.attestation)
        outcome = "released" if movable or state is EscrowState.RELEASED else state.value
    else:
        if movable:
            ledger.dispute(job_id=job_id, reason=_dispute_reason(hold))
        outcome = "disputed" if movable or state is EscrowState.DISPUTED else state.value
    holds.settled(job_id, outcome=outcome)
    services.control_channel().set_status(job_id, outcome)
    return outcome


def _dispute_reason(hold: Hold) -> str:
    evidence = hold.evidence or {}
    claim = f"segment starting at step {evidence.get('segment_start')} does not reproduce"
    return f"user dispute: {claim}"[:200]


def await_window(
    job_id: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], dt.datetime] | None = None,
) -> str:
    """Wait until the window closes or the owner disputes, then carry the decision out."""
    now = clock or (lambda: dt.datetime.now(dt.UTC))
    while True:
        hold = book().get(job_id)
        if hold.state != "held" or now() >= hold.closes_at:
            return finish_hold(job_id, now=now())
        sleep(min(POLL_S, max(0.05, (hold.closes_at - now()).total_seconds())))


def open_hold_runs() -> set[str]:
    """Lifecycle run ids of escrows whose release is held in an open window: no sweep may settle them."""
    runs = set()
    ledger = services.ledger()
    for hold in book().pending():
        if hold.state == "held":
            run_id = ledger.status(job_id=hold.job_id).run_id
            if run_id:
                runs.add(str(run_id))
    return runs


def settle_holds(now: dt.datetime | None = None) -> list[dict[str, str]]:
    """The escrow sweep's part (F2): finish every hold a dead lifecycle left; open windows keep waiting."""
    rows = []
    for hold in book().pending():
        try:
            outcome = finish_hold(hold.job_id, now=now)
        except Exception as exc:  # one bad escrow must not stop the others; the next sweep retries
            _audit("alert.hold", hold.job_id, success=False, reason=f"{type(exc).__name__}: {exc}"[:500])
            rows.append({"job_id": hold.job_id, "state": "alert", "step": f"hold: {exc}"[:200]})
            continue
        if outcome != "held":
            rows.append({"job_id": hold.job_id, "state": outcome, "step": "dispute window closed"})
    return rows
