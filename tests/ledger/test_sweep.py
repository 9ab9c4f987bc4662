"""Nothing stuck, nothing paid twice (F2): the escrow sweep after lifecycle crashes and chain refusals.

A lifecycle process is ``kill -9``ed after the lock, after dispatch, during verification and during the
release; one sweep later every escrow is released or refunded exactly once and the token supply is
conserved. A chain refusal during a release leaves the escrow ``settling`` (never a refund) and the sweep
sends the release again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from solders.system_program import TransferParams, transfer

from cyxwiz.audit import MemorySink
from cyxwiz.errors import EscrowError, EscrowStateError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.config import open_ledger
from cyxwiz.ledger.embedded import DemoLedger
from cyxwiz.ledger.provision import send_and_confirm
from cyxwiz.ledger.store import EscrowState, IntentStatus
from cyxwiz.ledger.verifier_service import VerifierProcess
from tests.ledger.conftest import NODE_PEER, PASSPHRASE, REPO, USER_FUNDS, Pki, World, demo_attest

pytestmark = pytest.mark.slow

POINTS = ("after_lock", "after_dispatch", "during_verification", "during_release")


def _supply(ledger: Any, demo: DemoLedger, jobs: list[str]) -> tuple[int, int, int]:
    chain, mint, payer = ledger.chain, ledger.mint, ledger.rent_owner
    user = chain.token_amount(txbuild.token_account_of(demo.user.pubkey(), mint)) or 0
    node = chain.token_amount(txbuild.token_account_of(demo.node.pubkey(), mint)) or 0
    held = sum(chain.token_amount(txbuild.escrow_address(payer, j, demo.user.pubkey())) or 0 for j in jobs)
    return user, node, held


def test_lifecycle_killed_at_each_step_one_sweep_settles_every_escrow_once(
    demo: DemoLedger, pki: Pki, verifier: VerifierProcess
) -> None:
    jobs = {point: f"job-{point.replace('_', '-')}" for point in POINTS}
    env = dict(os.environ, CYXWIZ_LEDGER_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(REPO))
    for point, job in jobs.items():
        report = demo_attest(pki, demo, job)
        proc = subprocess.run(
            [sys.executable, "-m", "tests.ledger._lifecycle_worker", str(demo.config_path), job, point,
             report, NODE_PEER],
            cwd=REPO, env=env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    ledger = open_ledger(demo.config)
    states = {p: ledger.status(job_id=j).state for p, j in jobs.items()}
    assert states["during_release"] is EscrowState.RELEASING
    assert {states[p] for p in POINTS[:3]} == {EscrowState.LOCKED}

    # A run the control plane still sees running is left alone, even past its deadline.
    untouched = ledger.sweep(run_state=lambda _run: "running")
    assert [r.job_id for r in untouched.reconciled] == [jobs["during_release"]]
    assert untouched.refunded == [] and ledger.status(job_id=jobs["after_lock"]).state is EscrowState.LOCKED

    report = ledger.sweep(run_state=lambda _run: "gone")
    assert sorted(r.job_id for r in report.refunded) == sorted(jobs[p] for p in POINTS[:3])
    final = {p: ledger.status(job_id=j).state for p, j in jobs.items()}
    assert final == {
        **dict.fromkeys(POINTS[:3], EscrowState.REFUNDED),
        "during_release": EscrowState.RELEASED,
    }
    amount = 5 * demo.minimum_payment
    assert _supply(ledger, demo, list(jobs.values())) == (demo.user_funds - amount, amount, 0)
    for job in jobs.values():  # exactly once: one confirmed settle transaction per escrow
        settles = [i for i in ledger.store.intents(job, status=IntentStatus.CONFIRMED) if i.kind != "create"]
        assert len(settles) == 1
    again = ledger.sweep(run_state=lambda _run: "gone")
    assert (again.reconciled, again.released, again.refunded, again.alerts) == ([], [], [], {})


def _drain(w: World) -> int:
    """Move the payer's lamports away so the chain refuses its next transaction (no fee money)."""
    keep = w.chain.minimum_rent(0) + 6_000  # rent-exempt, but short of the release's 15,000 fee
    holder_lamports = w.chain.lamports(w.payer.pubkey()) - keep
    ix = transfer(
        TransferParams(from_pubkey=w.payer.pubkey(), to_pubkey=w.user.pubkey(), lamports=holder_lamports)
    )
    send_and_confirm(w.chain, [ix], payer=w.payer)
    return holder_lamports


def test_chain_refusal_during_release_stays_settling_and_the_sweep_pays(local_world: World) -> None:
    w = local_world
    sink = MemorySink()
    ledger = w.ledger(audit=sink)
    ledger.create(job_id="job-s", user=w.user, amount=10_000)
    ledger.assign(job_id="job-s", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    lent = _drain(w)
    with pytest.raises(EscrowError, match="refused the release"):
        ledger.release(job_id="job-s", node_wallet=w.node.pubkey(), report=w.attest("job-s"))
    record = ledger.status(job_id="job-s")
    assert record.state is EscrowState.SETTLING and record.report_sha256 == "cd" * 32
    assert [e.details.get("reason") for e in sink.of_action("escrow.alert.release-pending")]
    # Never a refund: neither the lifecycle's rollback nor an expired-job sweep may turn it around.
    with pytest.raises(EscrowStateError, match="settling"):
        ledger.refund(job_id="job-s", reason="lifecycle rolled back")
    w.chain.airdrop(w.payer.pubkey(), lent)  # the chain takes transactions again
    report = ledger.sweep(run_state=lambda _run: "gone")
    assert [r.job_id for r in report.released] == ["job-s"]
    assert ledger.status(job_id="job-s").state is EscrowState.RELEASED
    assert (w.token(w.user), w.token(w.node)) == (USER_FUNDS - 10_000, 10_000)


def test_verifier_down_during_release_holds_it_settling_until_the_sweep(
    demo: DemoLedger, pki: Pki, verifier: VerifierProcess
) -> None:
    """The verifier service does not answer when a verified release is sent: the escrow waits
    ``settling`` (the lifecycle's rollback cannot refund it), and the sweep pays once it is back."""
    from cyxwiz.ledger.rpc import LedgerUnavailableError

    ledger = open_ledger(demo.config)
    amount = 5 * demo.minimum_payment
    ledger.create(job_id="job-vd", user=demo.user, amount=amount)
    ledger.assign(job_id="job-vd", node_wallet=demo.node.pubkey(), node_peer_id=NODE_PEER)
    verifier.stop()
    with pytest.raises(LedgerUnavailableError):
        ledger.release(
            job_id="job-vd", node_wallet=demo.node.pubkey(), report=demo_attest(pki, demo, "job-vd")
        )
    assert ledger.status(job_id="job-vd").state is EscrowState.SETTLING
    with pytest.raises(EscrowStateError, match="settling"):
        ledger.refund(job_id="job-vd", reason="lifecycle rolled back")
    verifier.start()
    report = ledger.sweep(run_state=lambda _run: "gone")
    assert [r.job_id for r in report.released] == ["job-vd"]
    assert _supply(ledger, demo, ["job-vd"]) == (demo.user_funds - amount, amount, 0)
