"""One settlement, one audit record (H2, H4, F2): a release in flight that both its lifecycle and the escrow
sweep drive to the end is paid once and audited once, by whichever of them concluded its intent.

On the real ledger service (LiteSVM behind JSON-RPC). The lifecycle's fault hook runs the sweep, on its own
ledger and store handle as the ``escrow-sweep`` flow has, at the two points where both can see the same
intent: after it was recorded (the sweep sends the signed bytes first, the lifecycle's send is then
``AlreadyProcessed``) and after it was sent (the sweep finds it landed and concludes it first).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cyxwiz.audit import MemorySink
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.store import EscrowState, IntentStatus
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World

AMOUNT = 20_000


class SweepAt:
    """The lifecycle's fault hook: once armed, runs one sweep when the release reaches ``point``."""

    def __init__(self, point: str, sweeper: Callable[[], EscrowLedger]) -> None:
        self.point, self.sweeper = point, sweeper
        self.armed = False
        self.ran = 0

    def __call__(self, at: str) -> None:
        if self.armed and at == self.point and not self.ran:
            self.ran += 1
            report = self.sweeper().sweep(run_state=lambda _run: "running")  # the lifecycle is alive
            assert [r.job_id for r in report.reconciled] == ["job-twice"]
            assert report.reconciled[0].state is EscrowState.RELEASED  # the sweep finished it first


@pytest.mark.parametrize("point", ["after_record", "after_send"])
def test_release_finished_by_lifecycle_and_sweep_is_paid_and_audited_once(
    rpc_world: World, point: str
) -> None:
    w = rpc_world
    sink = MemorySink()  # one audit log for the control plane's processes
    sweep = SweepAt(point, lambda: w.ledger(audit=sink))
    lifecycle = w.ledger(audit=sink, fault=sweep)
    lifecycle.create(job_id="job-twice", user=w.user, amount=AMOUNT)
    lifecycle.assign(job_id="job-twice", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    lamports = w.lamport_total("job-twice")

    sweep.armed = True
    record = lifecycle.release(job_id="job-twice", node_wallet=w.node.pubkey(), report=w.attest("job-twice"))

    assert sweep.ran == 1 and record.state is EscrowState.RELEASED
    settles = [i for i in lifecycle.store.intents("job-twice") if i.kind == "release"]
    assert [i.status for i in settles] == [IntentStatus.CONFIRMED]  # one transaction, sent or not twice
    released = [e for e in sink.of_action("escrow.release") if e.outcome.value == "success"]
    assert len(released) == 1, [e.details for e in sink.of_action("escrow.release")]
    assert released[0].details["tx_signature"] == settles[0].signature == record.settle_signature
    # one transfer: the node got the amount once, tokens and lamports are conserved
    assert (w.token(w.user), w.token(w.node)) == (USER_FUNDS - AMOUNT, AMOUNT)
    assert w.token_total("job-twice") == USER_FUNDS
    assert w.lamport_total("job-twice") == lamports - 3 * 5000  # the one release's fee (3 signatures)
    # positive control: a later sweep finds nothing to do and audits nothing more
    again = w.ledger(audit=sink).sweep(run_state=lambda _run: "gone")
    assert (again.reconciled, again.released, again.refunded) == ([], [], [])
    assert len([e for e in sink.of_action("escrow.release") if e.outcome.value == "success"]) == 1
