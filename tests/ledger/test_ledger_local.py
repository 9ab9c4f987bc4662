"""EscrowLedger on in-process LiteSVM: happy paths, balances conserved (F1–F3)."""

from __future__ import annotations

from cyxwiz.ledger.store import EscrowState
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World


def test_create_then_release_moves_funds_once_and_conserves_balances(local_world: World) -> None:
    w = local_world
    ledger = w.ledger()
    lamports_before = w.lamport_total("job-1")
    record = ledger.create(job_id="job-1", user=w.user, amount=250_000)
    assert record.state is EscrowState.LOCKED
    assert w.token(w.user) == USER_FUNDS - 250_000
    assert ledger.onchain_amount(job_id="job-1") == 250_000
    ledger.assign(job_id="job-1", node_wallet=str(w.node.pubkey()), node_peer_id=NODE_PEER)
    record = ledger.release(job_id="job-1", node_wallet=str(w.node.pubkey()), report=w.attest("job-1"))
    assert record.state is EscrowState.RELEASED
    assert record.settle_signature and record.proof_ref == f"sha256:{record.report_sha256}"
    assert w.token(w.node) == 250_000
    assert ledger.onchain_amount(job_id="job-1") == 0
    assert w.token_total("job-1") == USER_FUNDS
    assert w.lamport_total("job-1") + w.fees(ledger) == lamports_before


def test_create_then_refund_returns_funds(local_world: World) -> None:
    w = local_world
    ledger = w.ledger()
    lamports_before = w.lamport_total("job-2")
    ledger.create(job_id="job-2", user=w.user, amount=5_000)
    record = ledger.refund(job_id="job-2")
    assert record.state is EscrowState.REFUNDED
    assert w.token(w.user) == USER_FUNDS
    assert w.token_total("job-2") == USER_FUNDS
    assert w.lamport_total("job-2") + w.fees(ledger) == lamports_before
