"""Crash safety (F2): a real ``kill -9`` between recording an intent and sending it, and between sending
and recording confirmation; after restart the reconciler ends every escrow in exactly one terminal state,
never pays twice, and balances are conserved. Also: the ledger service itself killed mid-job keeps balances.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from solders.pubkey import Pubkey

from cyxwiz.errors import EscrowStateError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.config import open_ledger
from cyxwiz.ledger.embedded import DemoLedger, LocalLedgerHandle, provision_demo, start_local_ledger
from cyxwiz.ledger.keystore import KdfParams
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.rpc import RpcChain
from cyxwiz.ledger.store import EscrowState, IntentStatus
from cyxwiz.ledger.verifier_service import VerifierProcess
from tests.ledger.conftest import NODE_PEER, PASSPHRASE, REPO, Pki, demo_attest

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LocalLedgerHandle]:
    with start_local_ledger(tmp_path / "service", dev_methods=True) as handle:
        yield handle


@pytest.fixture
def demo(service: LocalLedgerHandle, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> DemoLedger:
    """Like the shared fixture, on this test's own (restartable) ledger service."""
    monkeypatch.setenv("CYXWIZ_LEDGER_PASSPHRASE", PASSPHRASE)
    return provision_demo(
        rpc_url=service.rpc_url,
        state_dir=tmp_path / "demo",
        passphrase=PASSPHRASE.encode(),
        user_funds=100_000_000,
        kdf=KdfParams.fast_for_tests(),
        pki=pki.dev,
    )


@pytest.fixture(autouse=True)
def _verifier_running(verifier: VerifierProcess) -> None:
    """Every escrow move here is co-signed by the verifier service in its own process."""


def _crash(demo: DemoLedger, op: str, job_id: str, point: str, report: str = "") -> None:
    env = dict(os.environ, CYXWIZ_LEDGER_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.ledger._crash_worker",
            str(demo.config_path),
            op,
            job_id,
            point,
            report,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def _balances(ledger: EscrowLedger, demo: DemoLedger, job_id: str) -> tuple[int, int, int]:
    chain = ledger.chain
    escrow = (
        chain.token_amount(txbuild.escrow_address(ledger._payer.pubkey(), job_id, demo.user.pubkey())) or 0
    )
    user = chain.token_amount(txbuild.token_account_of(demo.user.pubkey(), ledger.mint)) or 0
    node = chain.token_amount(txbuild.token_account_of(demo.node.pubkey(), ledger.mint)) or 0
    return user, escrow, node


def _locked_job(demo: DemoLedger, job_id: str) -> tuple[EscrowLedger, int]:
    ledger = open_ledger(demo.config)
    amount = 5 * demo.minimum_payment
    ledger.create(job_id=job_id, user=demo.user, amount=amount)
    ledger.assign(job_id=job_id, node_wallet=demo.node.pubkey(), node_peer_id=NODE_PEER)
    return ledger, amount


@pytest.mark.parametrize("point", ["after_record", "after_send"])
def test_kill_during_release_then_reconcile_pays_exactly_once(demo: DemoLedger, pki: Pki, point: str) -> None:
    ledger, amount = _locked_job(demo, "job-crash")
    report = demo_attest(pki, demo, "job-crash")
    _crash(demo, "release", "job-crash", point, report)
    assert ledger.status(job_id="job-crash").state is EscrowState.RELEASING
    [pending] = ledger.store.intents("job-crash", status=IntentStatus.PREPARED)
    moved = _balances(ledger, demo, "job-crash")
    expected_moved = (demo.user_funds - amount, 0, amount) if point == "after_send" else None
    if expected_moved:
        assert moved == expected_moved  # on chain it happened; only the record is missing
    else:
        assert moved == (demo.user_funds - amount, amount, 0)
    # A concurrent caller cannot start a second release while one is in flight.
    with pytest.raises(EscrowStateError, match="in flight"):
        ledger.release(job_id="job-crash", node_wallet=demo.node.pubkey(), report=report)

    restarted = open_ledger(demo.config)  # "after restart": a fresh process's view
    [record] = restarted.reconcile()
    assert record.state is EscrowState.RELEASED
    assert record.settle_signature == pending.signature  # the recorded transaction, not a second one
    assert _balances(restarted, demo, "job-crash") == (demo.user_funds - amount, 0, amount)
    assert restarted.reconcile() == []
    with pytest.raises(EscrowStateError, match="already released"):
        restarted.release(job_id="job-crash", node_wallet=demo.node.pubkey(), report=report)
    assert _balances(restarted, demo, "job-crash") == (demo.user_funds - amount, 0, amount)


@pytest.mark.parametrize("point", ["after_record", "after_send"])
def test_kill_during_refund_then_reconcile(demo: DemoLedger, point: str) -> None:
    ledger, _amount = _locked_job(demo, "job-refund")
    _crash(demo, "refund", "job-refund", point)
    [record] = open_ledger(demo.config).reconcile()
    assert record.state is EscrowState.REFUNDED
    assert _balances(ledger, demo, "job-refund") == (demo.user_funds, 0, 0)


@pytest.mark.parametrize("point", ["after_record", "after_send"])
def test_kill_during_create_then_reconcile_locks_once(demo: DemoLedger, point: str) -> None:
    _crash(demo, "create", "job-new", point)
    ledger = open_ledger(demo.config)
    [record] = ledger.reconcile()
    assert record.state is EscrowState.LOCKED
    assert _balances(ledger, demo, "job-new") == (demo.user_funds - record.amount, record.amount, 0)


def test_kill_before_send_then_ledger_restart_expires_blockhash_and_reconciler_resends_fresh(
    demo: DemoLedger, service: LocalLedgerHandle, pki: Pki
) -> None:
    """The signed release never left the crashed process and its blockhash died with a service restart:
    the reconciler records a fresh transaction for the same move (co-signed again by the verifier from
    the stored report) and pays exactly once."""
    _ledger, amount = _locked_job(demo, "job-exp")
    _crash(demo, "release", "job-exp", "after_record", demo_attest(pki, demo, "job-exp"))
    service.kill()
    service.start()
    restarted = open_ledger(demo.config)
    [record] = restarted.reconcile()
    assert record.state is EscrowState.RELEASED
    intents = restarted.store.intents("job-exp")
    assert [i.status for i in intents if i.kind == "release"] == [
        IntentStatus.EXPIRED,
        IntentStatus.CONFIRMED,
    ]
    assert _balances(restarted, demo, "job-exp") == (demo.user_funds - amount, 0, amount)


def test_create_expired_by_restart_ends_void_with_no_funds_moved(
    demo: DemoLedger, service: LocalLedgerHandle
) -> None:
    _crash(demo, "create", "job-void", "after_record")
    service.kill()
    service.start()
    ledger = open_ledger(demo.config)
    [record] = ledger.reconcile()
    assert record.state is EscrowState.VOID
    assert _balances(ledger, demo, "job-void") == (demo.user_funds, 0, 0)


def test_ledger_service_killed_mid_job_keeps_every_balance(
    demo: DemoLedger, service: LocalLedgerHandle, pki: Pki
) -> None:
    ledger, amount = _locked_job(demo, "job-mid")
    chain = RpcChain(url=service.rpc_url)
    payer_lamports = chain.lamports(ledger._payer.pubkey())
    before = _balances(ledger, demo, "job-mid")
    service.kill()  # kill -9 of the service process
    service.start()
    assert _balances(ledger, demo, "job-mid") == before
    assert chain.lamports(ledger._payer.pubkey()) == payer_lamports
    record = ledger.release(
        job_id="job-mid", node_wallet=demo.node.pubkey(), report=demo_attest(pki, demo, "job-mid")
    )
    assert record.state is EscrowState.RELEASED
    assert _balances(ledger, demo, "job-mid") == (demo.user_funds - amount, 0, amount)
    chain.close()


STAKE = 40_000_000


def _staked_fraud_job(demo: DemoLedger, pki: Pki, job_id: str) -> tuple[EscrowLedger, str, int]:
    """The node staked (tokens the user passed it), a job refunded on a ``fraud`` verdict: a slash owed."""
    from spl.token import instructions as token_ix
    from spl.token.constants import TOKEN_PROGRAM_ID
    from spl.token.models import TransferCheckedParams

    from cyxwiz.ledger.provision import send_and_confirm
    from cyxwiz.ledger.stake import StakeLedger

    ledger = open_ledger(demo.config)
    source, dest = (txbuild.token_account_of(k.pubkey(), ledger.mint) for k in (demo.user, demo.node))
    send_and_confirm(ledger.chain, [token_ix.transfer_checked(TransferCheckedParams(
        program_id=TOKEN_PROGRAM_ID, source=source, mint=ledger.mint, dest=dest, owner=demo.user.pubkey(),
        amount=STAKE, decimals=ledger.decimals,
    ))], payer=ledger._payer, signers=[demo.user])  # fmt: skip
    StakeLedger(ledger=ledger, policy=demo.config.stake_policy()).stake(
        peer_id=NODE_PEER, node=demo.node, amount=STAKE
    )
    ledger.create(job_id=job_id, user=demo.user, amount=5 * demo.minimum_payment)
    ledger.assign(job_id=job_id, node_wallet=demo.node.pubkey(), node_peer_id=NODE_PEER)
    fraud = demo_attest(pki, demo, job_id, verdict="fraud")
    ledger.refund(job_id=job_id, reason="verification proved fraud", report=fraud)
    return ledger, fraud, STAKE * demo.config.slash_bps // 10_000


@pytest.mark.parametrize("point", ["decided", "after_record", "after_send"])
def test_kill_during_slash_then_sweep_slashes_exactly_once(demo: DemoLedger, pki: Pki, point: str) -> None:
    """kill -9 after the fraud refund (the decision is on disk, the slash not started), after the slash
    intent was recorded, after it was sent: one sweep later the share moved once, the book agrees."""
    from cyxwiz.ledger.stake import StakeBook

    ledger, fraud, share = _staked_fraud_job(demo, pki, "job-fraud")
    if point != "decided":
        _crash(demo, "slash", "job-fraud", point, fraud)
        [pending] = ledger.store.intents("job-fraud", status=IntentStatus.PREPARED)
        assert pending.kind == "slash"
    stake_account = txbuild.token_account_of(demo.node.pubkey(), ledger.mint)  # (the node's own wallet)
    user = txbuild.token_account_of(demo.user.pubkey(), ledger.mint)
    restarted = open_ledger(demo.config)
    report = restarted.sweep(run_state=lambda _run: "gone")
    assert report.alerts == {}
    assert report.slashed == (["job-fraud"] if point == "decided" else [])
    book = StakeBook(restarted.store._engine).get(NODE_PEER)
    assert (book.amount, book.slashed) == (STAKE - share, share)
    [slash] = [i for i in restarted.store.intents("job-fraud") if i.kind == "slash"]
    assert slash.status is IntentStatus.CONFIRMED
    chain = restarted.chain
    assert chain.token_amount(user) == demo.user_funds - STAKE + share  # refunded, then the share
    assert chain.token_amount(stake_account) == 0
    assert chain.token_amount(Pubkey.from_string(book.stake_account)) == STAKE - share
    again = restarted.sweep(run_state=lambda _run: "gone")  # nothing owed twice
    assert again.slashed == [] and again.reconciled == []
    assert chain.token_amount(user) == demo.user_funds - STAKE + share
