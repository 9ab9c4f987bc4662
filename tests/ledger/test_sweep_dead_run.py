"""A lifecycle killed before its rollback leaves its escrow locked; once Prefect says its run is over the
next sweep refunds it at once, not at its deadline (issue 21 chaos; F2). A live run is never touched."""

from __future__ import annotations

import datetime as dt

from cyxwiz.ledger.store import EscrowState, IntentStatus
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World

RUN = "5b0f7d5e-3c1d-4a4e-9d7b-2f1f4d8f9a10"


def test_a_dead_lifecycle_run_is_refunded_by_the_next_sweep_before_its_deadline(local_world: World) -> None:
    w = local_world
    ledger = w.ledger()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    ledger.create(job_id="job-dead", user=w.user, amount=10_000, deadline=later, run_id=RUN)
    ledger.create(job_id="job-live", user=w.user, amount=20_000, deadline=later, run_id=RUN.replace("5", "6"))
    ledger.assign(job_id="job-dead", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    asked: list[str | None] = []

    def run_state(run_id: str | None) -> str:
        asked.append(run_id)
        return "terminal" if run_id == RUN else "running"

    report = ledger.sweep(run_state=run_state)  # type: ignore[arg-type]
    assert [r.job_id for r in report.refunded] == ["job-dead"]
    assert ledger.status(job_id="job-dead").state is EscrowState.REFUNDED
    assert ledger.status(job_id="job-live").state is EscrowState.LOCKED  # its run may still settle it
    assert RUN in asked
    assert (w.token(w.user), w.token(w.node)) == (USER_FUNDS - 20_000, 0)
    confirmed = ledger.store.intents("job-dead", status=IntentStatus.CONFIRMED)
    settles = [i for i in confirmed if i.kind != "create"]
    assert len(settles) == 1
    again = ledger.sweep(run_state=run_state)  # type: ignore[arg-type]
    assert (again.refunded, again.released, again.alerts) == ([], [], {})


def test_an_unexpired_escrow_whose_run_prefect_does_not_know_waits_for_its_deadline(
    local_world: World,
) -> None:
    """``gone`` may mean a Prefect database restored from an older backup: only the deadline decides."""
    w = local_world
    ledger = w.ledger()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    ledger.create(job_id="job-gone", user=w.user, amount=10_000, deadline=later, run_id=RUN)
    assert ledger.sweep(run_state=lambda _run: "gone").refunded == []
    assert ledger.status(job_id="job-gone").state is EscrowState.LOCKED
