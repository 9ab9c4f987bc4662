"""A compromised coordinator cannot refund a job whose verification passed (F1, threat I "payment fraud").

The coordinator co-signs refunds and owns the escrow database, so neither the ledger's own checks nor the
escrow record can stop it: the verifier service (its own process, its own key, its own verdict book)
refuses to co-sign a refund or a slash once it signed or co-signed a passing report for the job. Real
ledger service (LiteSVM behind JSON-RPC), real verifier process; each attack beside its honest control,
the exact refusal, the state afterwards and conserved balances.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from solders.message import Message
from solders.pubkey import Pubkey

from cyxwiz.ledger import txbuild
from cyxwiz.ledger.config import open_ledger
from cyxwiz.ledger.cosign import CosignRequest
from cyxwiz.ledger.embedded import DemoLedger
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.store import EscrowState, IntentStatus
from cyxwiz.ledger.verdicts import ReleaseOwedError
from cyxwiz.ledger.verifier_client import RemoteCosigner
from cyxwiz.ledger.verifier_service import VerifierProcess, start_verifier_service
from tests.ledger.conftest import NODE_PEER, REPO, Pki, demo_attest


@pytest.fixture
def verifier_with_hook(demo: DemoLedger, tmp_path: Path) -> Iterator[VerifierProcess]:
    """The verifier service process with a verification hook: it signs and records verdicts itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("CYXWIZ_LEDGER_PASSPHRASE",)}
    env |= {"PYTHONPATH": str(REPO), **demo.verifier_env()}
    with start_verifier_service(
        config_path=demo.config_path,
        state_dir=tmp_path / "verifier",
        env=env,
        module="tests.ledger._verifier_hook",
    ) as proc:
        yield proc


def _lock(ledger: EscrowLedger, demo: DemoLedger, job_id: str, **assign: Any) -> int:
    amount = 3 * demo.minimum_payment
    ledger.create(job_id=job_id, user=demo.user, amount=amount)
    ledger.assign(job_id=job_id, node_wallet=demo.node.pubkey(), node_peer_id=NODE_PEER, **assign)
    return amount


def _verify(remote: RemoteCosigner, ledger: EscrowLedger, job_id: str, verdict: str = "pass") -> str:
    record = ledger.status(job_id=job_id)
    answer = remote.verify({
        "job_id": job_id, "node_peer_id": NODE_PEER, "node_wallet": record.node_wallet,
        "escrow": record.escrow_account, "verdict": verdict,
    })  # fmt: skip
    return str(answer["attestation"])


def _tokens(ledger: EscrowLedger, demo: DemoLedger, *jobs: str) -> tuple[int, int, int]:
    def held(owner: Pubkey) -> int:
        return ledger.chain.token_amount(txbuild.token_account_of(owner, ledger.mint)) or 0

    escrows = sum(
        ledger.chain.token_amount(txbuild.escrow_address(ledger.rent_owner, job, demo.user.pubkey())) or 0
        for job in jobs
    )
    return held(demo.user.pubkey()), escrows, held(demo.node.pubkey())


def test_compromised_coordinator_cannot_refund_a_job_that_passed(
    demo: DemoLedger, pki: Pki, verifier_with_hook: VerifierProcess
) -> None:
    coordinator = open_ledger(demo.config)  # the coordinator key and the escrow database: all it holds
    remote = RemoteCosigner(socket_path=verifier_with_hook.socket_path)
    amount = _lock(coordinator, demo, "job-pass")
    _lock(coordinator, demo, "job-failed")
    passed = _verify(remote, coordinator, "job-pass")
    before = _tokens(coordinator, demo, "job-pass", "job-failed")
    assert before == (demo.user_funds - 2 * amount, 2 * amount, 0)

    # 1. Through the ledger: the record knows nothing of the pass (the lifecycle "forgot" to release).
    with pytest.raises(ReleaseOwedError, match="owed to the node") as refused:
        coordinator.refund(job_id="job-pass", reason="cover-up")
    assert refused.value.code == "escrow-release-owed" and refused.value.field == "job_id"
    # 2. Asking the verifier again gets the same pass back (issue 21: one verdict per request) ...
    assert _verify(remote, coordinator, "job-pass", verdict="fail") == passed
    # ... and a failing verdict signed by the verifier's certificate some other way: the first pass stands.
    fail = demo_attest(pki, demo, "job-pass", verdict="fail")
    with pytest.raises(ReleaseOwedError):
        coordinator.refund(job_id="job-pass", reason="cover-up", report=fail)
    # 3. Around the ledger: its own refund message straight to the verifier's socket.
    with pytest.raises(ReleaseOwedError):
        remote.cosign(CosignRequest(kind="refund", job_id="job-pass", message=_refund_message(coordinator)))
    record = coordinator.status(job_id="job-pass")
    assert record.state is EscrowState.LOCKED and record.settle_signature is None
    assert [i.kind for i in coordinator.store.intents("job-pass")] == ["create"]
    assert _tokens(coordinator, demo, "job-pass", "job-failed") == before

    # Positive controls: a job with no passing verdict is refunded; the passed one is released.
    refunded = coordinator.refund(job_id="job-failed", reason="verification failed")
    assert refunded.state is EscrowState.REFUNDED
    released = coordinator.release(job_id="job-pass", node_wallet=demo.node.pubkey(), report=passed)
    assert released.state is EscrowState.RELEASED
    assert _tokens(coordinator, demo, "job-pass", "job-failed") == (demo.user_funds - amount, 0, amount)
    remote.close()


def test_pass_seen_in_a_release_cosign_blocks_the_refund_too(
    demo: DemoLedger, verifier_with_hook: VerifierProcess
) -> None:
    """The coordinator obtains the release co-signature, never sends it, then asks for a refund."""
    coordinator = open_ledger(demo.config)
    remote = RemoteCosigner(socket_path=verifier_with_hook.socket_path)
    amount = _lock(coordinator, demo, "job-held")
    passed = _verify(remote, coordinator, "job-held")
    record = coordinator.status(job_id="job-held")
    intent = coordinator.settle_intent(
        record, "release", demo.node.pubkey(), coordinator._keys("coordinator"),
        (coordinator._cosigner(), "release", passed),
    )  # fmt: skip
    assert intent.signature  # co-signed, kept, never sent
    with pytest.raises(ReleaseOwedError):
        coordinator.refund(job_id="job-held")
    assert coordinator.status(job_id="job-held").state is EscrowState.LOCKED
    assert _tokens(coordinator, demo, "job-held") == (demo.user_funds - amount, amount, 0)
    remote.close()


def test_sweep_releases_an_expired_escrow_that_passed_instead_of_refunding(
    demo: DemoLedger, verifier_with_hook: VerifierProcess
) -> None:
    """The lifecycle died between the passing verdict and the release: the sweep pays the node."""
    ledger = open_ledger(demo.config)
    remote = RemoteCosigner(socket_path=verifier_with_hook.socket_path)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    amount = _lock(ledger, demo, "job-orphan", deadline=past)
    _lock(ledger, demo, "job-lost", deadline=past)
    _lock(ledger, demo, "job-dead", deadline=past)  # never verified: refunded (positive control)
    _verify(remote, ledger, "job-orphan")
    _verify(remote, ledger, "job-lost")
    # The assignment is not waited for on disk: a crash may lose it after the verdict was signed.
    ledger.store.update_fields("job-lost", allowed=[EscrowState.LOCKED], node_wallet=None, node_peer_id=None)
    report = ledger.sweep(run_state=lambda _run: "gone")
    assert sorted(r.job_id for r in report.released) == ["job-lost", "job-orphan"]
    assert [r.job_id for r in report.refunded] == ["job-dead"]
    assert report.alerts == {}
    for job in ("job-orphan", "job-lost"):
        [release] = ledger.store.intents(job, status=IntentStatus.CONFIRMED)[1:]
        assert release.kind == "release" and release.recipient_wallet == str(demo.node.pubkey())
    jobs = ("job-orphan", "job-lost", "job-dead")
    assert _tokens(ledger, demo, *jobs) == (demo.user_funds - 2 * amount, 0, 2 * amount)
    remote.close()


def _refund_message(ledger: EscrowLedger) -> bytes:
    record = ledger.status(job_id="job-pass")
    instructions = txbuild.settle_escrow(
        payer=ledger._payer.pubkey(), escrow=Pubkey.from_string(record.escrow_account), mint=ledger.mint,
        decimals=ledger.decimals, multisig=ledger.multisig, recipient_wallet=demo_user(record),
        amount=record.amount, rent_owner=ledger.rent_owner,
        authority_signers=[ledger._keys("coordinator")[0].pubkey(), ledger._cosigner().pubkey()],
        memo_text=f"cyxwiz:escrow:refund:{record.job_id}",
    )  # fmt: skip
    blockhash, _ = ledger.chain.latest_blockhash()
    return bytes(Message.new_with_blockhash(instructions, ledger._payer.pubkey(), blockhash))


def demo_user(record: Any) -> Pubkey:
    return Pubkey.from_string(record.user_wallet)


def test_compromised_coordinator_cannot_refund_to_a_wallet_of_its_choosing(
    demo: DemoLedger, verifier_with_hook: VerifierProcess
) -> None:
    """It rewrites the funding wallet in its own escrow store and asks for a refund: the verifier derives
    the escrow account from the wallet it is asked to refund and refuses; rewriting the escrow account
    too only names an account that holds nothing (the chain refuses). Positive control: the real refund."""
    from solders.keypair import Keypair

    from cyxwiz.errors import EscrowError
    from cyxwiz.ledger.cosign import CosignRefusedError

    coordinator = open_ledger(demo.config)
    amount = _lock(coordinator, demo, "job-steal")
    thief = Keypair().pubkey()
    real = coordinator.status(job_id="job-steal")
    locked = [EscrowState.LOCKED]

    def forge(wallet: Pubkey, **more: str) -> None:
        coordinator.store.update_fields(
            "job-steal", allowed=locked, user_wallet=str(wallet),
            user_token_account=str(txbuild.token_account_of(wallet, coordinator.mint)), **more,
        )  # fmt: skip

    forge(thief)
    with pytest.raises(CosignRefusedError, match="wallet that funded") as refused:
        coordinator.refund(job_id="job-steal", reason="to the thief")
    assert refused.value.field == "user_wallet"
    forge(thief, escrow_account=str(txbuild.escrow_address(coordinator.rent_owner, "job-steal", thief)))
    with pytest.raises(EscrowError, match="refused"):
        coordinator.refund(job_id="job-steal", reason="to the thief, consistently forged")
    stolen = coordinator.chain.token_amount(txbuild.token_account_of(thief, coordinator.mint)) or 0
    assert stolen == 0 and coordinator.status(job_id="job-steal").state is EscrowState.LOCKED
    assert _tokens(coordinator, demo, "job-steal") == (demo.user_funds - amount, amount, 0)

    forge(demo.user.pubkey(), escrow_account=real.escrow_account)  # the honest record again
    assert coordinator.refund(job_id="job-steal", reason="job failed").state is EscrowState.REFUNDED
    assert _tokens(coordinator, demo, "job-steal") == (demo.user_funds, 0, 0)
