"""One escrow-sweep pass over everything a crash can leave behind (F2, H2): money first, then the job.

:meth:`EscrowLedger.sweep` settles the money (in-flight moves finished, releases retried, escrows of dead
runs refunded). A lifecycle killed after its settlement but before its archive leaves the escrow final,
its job row ``verifying`` or ``running`` and its Prefect run ``RUNNING`` forever: :func:`finish_orphans`
marks such a run dead (:func:`tasks.sweep.lifecycle_run_state`), archives the settlement as the ledger
recorded it (the signed verdict's attestation beside it: the full report lived in the dead run), seals the
model files the node uploaded, and gives the job row the escrow's outcome. The same for an escrow the sweep
itself refunded. A live run is never touched: it archives and finishes its job itself.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from cyxwiz.errors import NotFoundError
from cyxwiz.ledger.recovery import RunState, RunStatus

#: Job rows that are over: the sweep leaves them alone.
FINISHED = frozenset({"released", "refunded", "failed", "cancelled", "completed"})


def sweep_once() -> dict[str, Any]:
    """What the ``escrow-sweep`` flow runs: the ledger's sweep, then the jobs its crashes left open."""
    from tasks import services
    from tasks.holds import open_hold_runs
    from tasks.sweep import lifecycle_run_state

    state = functools.partial(lifecycle_run_state, silent_after_s=services.config().run_silent_s)
    # A verified release held for its dispute window (issue 20) is the hold's to settle, never the
    # sweep's: its lifecycle counts as running until the window closes, whatever became of the process.
    held = open_hold_runs()

    def run_state(run_id: str | None) -> RunStatus:
        return "running" if run_id is not None and run_id in held else state(run_id)

    from tasks.node_stake import node_peers

    # Owed slashes take the node's stake under any of its PeerIDs: renewing does not escape them (F1).
    report = services.ledger().sweep(run_state=run_state, node_peers=node_peers)
    return {"report": report, "finished": finish_orphans(run_state=run_state)}


def finish_orphans(*, run_state: RunState) -> list[dict[str, str]]:
    """Close every job whose escrow is settled and whose lifecycle run is over without having closed it."""
    from cyxwiz.ledger.store import EscrowState
    from tasks import services

    control = services.control_channel()
    ledger = services.ledger()
    finished: list[dict[str, str]] = []
    for job in control.store.list_jobs():  # type: ignore[attr-defined]  # the scheduler channel's store
        if job.status == "released":
            continue
        try:
            record = ledger.status(job_id=job.job_id)
        except NotFoundError:
            continue
        if record.state not in (EscrowState.RELEASED, EscrowState.REFUNDED):
            continue
        if record.state is EscrowState.REFUNDED and job.status in FINISHED:
            continue
        # A release the sweep finished after the run's rollback had written ``cancelled`` is still paid:
        # the row says released, as the ledger does.
        if run_state(record.run_id) == "running":
            continue  # its own run archives and closes it
        outcome = record.state.value
        _archive_settlement(job.job_id, record, ledger)
        control.set_status(job.job_id, outcome)
        _audit_finished(job.job_id, outcome=outcome, run_id=record.run_id)
        finished.append({"job_id": job.job_id, "status": outcome})
    return finished


def _archive_settlement(job_id: str, record: Any, ledger: Any) -> None:
    from tasks import services

    store = services.store()
    for info in store.list(f"jobs/{job_id}/outputs/"):
        if info.key.endswith(".safetensors") and not info.encrypted:  # sealed at rest, as archive does (D2)
            store.put_bytes(info.key, store.get_bytes(info.key), encrypt=True)
    settlement = {
        "state": record.state.value,
        "escrow_account": record.escrow_account,
        "report_sha256": record.report_sha256,
        "settle_signature": record.settle_signature,
        "memo": ledger.settlement_memo(job_id=job_id),
        "attestation": json.loads(record.report) if record.report else None,
        "recovered": "archived by the escrow sweep: the lifecycle run died after the settlement",
    }
    store.put_bytes(f"jobs/{job_id}/settlement.json", json.dumps(settlement, sort_keys=True).encode())


def _audit_finished(job_id: str, *, outcome: str, run_id: str | None) -> None:
    from cyxwiz.audit import events as ev
    from tasks import services

    services.audit().record(
        ev.make_event(
            event_type=ev.EventType.CONFIGURATION, actor_id="escrow-sweep", actor_type=ev.ActorType.SERVICE,
            resource=f"job:{job_id}", action="job.finish-after-crash", outcome=ev.Outcome.SUCCESS,
            details={"status": outcome, "lifecycle_run": run_id},
        )
    )  # fmt: skip
