"""The sweep's retries pay only where the first attempt could (issue 17; SPEC F1, F2, threat I).

The sweep rebuilds a release left ``settling`` and refunds an expired escrow from the escrow store's
rows — the coordinator's database. The attacker rewrites those rows between the first attempt and the
sweep (the node wallet of a settling release; the user wallet of an expired escrow) and also builds the
retry itself, paying itself with the stored passing report. The verifier co-signs none of it: a release
pays only the wallet the verifier's passing attestation names, a refund only the wallet the escrow's own
address was derived from. The escrow waits, untouched, and the sweep settles it honestly once the rows are
put back (positive control), balances conserved. Real ledger service: LiteSVM behind JSON-RPC.
"""

from __future__ import annotations

import datetime as dt

import pytest

from cyxwiz.errors import EscrowError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import ReportBindingError
from cyxwiz.ledger.cosign import CosignRefusedError
from cyxwiz.ledger.store import EscrowState
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World
from tests.ledger.test_sweep import _drain

AMOUNT = 10_000


def _escrowed(w: World, job: str) -> int:
    return w.chain.token_amount(txbuild.escrow_address(w.payer.pubkey(), job, w.user.pubkey())) or 0


def test_a_settling_release_retried_by_the_sweep_pays_only_the_attested_node(money_world: World) -> None:
    w = money_world
    ledger = w.ledger()
    ledger.create(job_id="job-s", user=w.user, amount=AMOUNT)
    ledger.assign(job_id="job-s", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    lent = _drain(w)
    with pytest.raises(EscrowError, match="refused the release"):
        ledger.release(job_id="job-s", node_wallet=w.node.pubkey(), report=w.attest("job-s"))
    w.chain.airdrop(w.payer.pubkey(), lent)
    honest = ledger.status(job_id="job-s")
    assert honest.state is EscrowState.SETTLING
    thief = w.other_node.pubkey()
    signers, plan = ledger._keys("coordinator"), (ledger._cosigner(), "release", honest.report)
    # The attacker's own retry: the stored passing report, its own wallet as the destination.
    with pytest.raises(CosignRefusedError, match="allowed recipient") as refused:
        ledger.settle_intent(honest, "release", thief, signers, plan)
    assert refused.value.rule == "F1"
    # The row rewritten: the sweep's honest code builds the release to it; the report names another wallet.
    ledger.store.update_fields("job-s", allowed=[EscrowState.SETTLING], node_wallet=str(thief))
    forged = ledger.status(job_id="job-s")
    with pytest.raises(ReportBindingError):
        ledger.settle_intent(forged, "release", thief, signers, plan)
    report = ledger.sweep(run_state=lambda _run: "gone")
    assert report.released == [] and "escrow-report-binding" in report.alerts["job-s"]
    assert ledger.status(job_id="job-s").state is EscrowState.SETTLING
    assert (w.token(thief), _escrowed(w, "job-s")) == (0, AMOUNT)
    ledger.store.update_fields("job-s", allowed=[EscrowState.SETTLING], node_wallet=honest.node_wallet)
    report = ledger.sweep(run_state=lambda _run: "gone")  # positive control
    assert [r.job_id for r in report.released] == ["job-s"]
    assert (w.token(w.node), w.token(thief), w.token(w.user)) == (AMOUNT, 0, USER_FUNDS - AMOUNT)
    assert w.token_total("job-s") == USER_FUNDS


def test_an_expired_escrow_the_sweep_refunds_goes_back_only_to_its_funder(money_world: World) -> None:
    w = money_world
    ledger = w.ledger()
    ledger.create(job_id="job-x", user=w.user, amount=AMOUNT)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    ledger.assign(job_id="job-x", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER, deadline=soon)
    honest = ledger.status(job_id="job-x")
    thief = w.other_node.pubkey()
    ledger.store.update_fields("job-x", allowed=[EscrowState.LOCKED], user_wallet=str(thief))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    report = ledger.sweep(run_state=lambda _run: "gone", now=later)
    assert report.refunded == [] and "escrow-cosign-refused" in report.alerts["job-x"]
    assert ledger.status(job_id="job-x").state is EscrowState.LOCKED
    assert (w.token(thief), _escrowed(w, "job-x")) == (0, AMOUNT)
    ledger.store.update_fields("job-x", allowed=[EscrowState.LOCKED], user_wallet=honest.user_wallet)
    report = ledger.sweep(run_state=lambda _run: "gone", now=later)  # positive control
    assert [r.job_id for r in report.refunded] == ["job-x"]
    assert (w.token(w.user), w.token(thief)) == (USER_FUNDS, 0) and w.token_total("job-x") == USER_FUNDS
