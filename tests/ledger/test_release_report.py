"""A release is bound to a verifier-signed passing report (F1, threat I "payment fraud").

Every attack calls ``EscrowLedger.release`` directly, as any code path that reaches the ledger could, and
asserts the precise refusal, that the escrow stays locked and that no token moved; the positive control
releases with the verifier's attestation and finds the report's SHA-256 in the settlement memo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from solders.transaction import VersionedTransaction

from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import (
    ReportBindingError,
    ReportSignatureError,
    ReportSignerError,
    ReportVerdictError,
)
from cyxwiz.ledger.cosign import CosignRefusedError, CosignRequest
from cyxwiz.ledger.records import ProofRequiredError, WrongRecipientError
from cyxwiz.ledger.store import EscrowState, IntentStatus
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World, make_pki


def _locked(w: World, job_id: str = "job-a", amount: int = 10_000) -> None:
    ledger = w.ledger()
    ledger.create(job_id=job_id, user=w.user, amount=amount)
    ledger.assign(job_id=job_id, node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)


def _unmoved(w: World, job_id: str = "job-a") -> None:
    ledger = w.ledger()
    assert ledger.status(job_id=job_id).state is EscrowState.LOCKED
    assert (w.token(w.user), w.token(w.node), ledger.onchain_amount(job_id=job_id)) == (
        USER_FUNDS - 10_000,
        0,
        10_000,
    )
    assert ledger.store.intents(job_id, status=IntentStatus.PREPARED) == []


def test_release_with_a_passing_verifier_report_pays_and_puts_the_hash_in_the_memo(world: World) -> None:
    _locked(world)
    ledger = world.ledger()
    report = world.attest("job-a", report_sha256="ef" * 32)
    record = ledger.release(job_id="job-a", node_wallet=world.node.pubkey(), report=report)
    assert record.state is EscrowState.RELEASED
    assert record.report_sha256 == "ef" * 32
    assert world.token(world.node) == 10_000
    [release] = [i for i in ledger.store.intents("job-a") if i.kind == "release"]
    memo = bytes(VersionedTransaction.from_bytes(release.tx).message.instructions[-1].data).decode()
    assert memo == f"cyxwiz:escrow:release:job-a:report={'ef' * 32}"


@pytest.mark.parametrize(
    "report",
    [None, "", "sha256:" + "0" * 64, "made-up-proof-ref", {"job_id": "job-a", "verdict": "pass"}],
)
def test_release_without_a_signed_report_is_refused(world: World, report: object) -> None:
    _locked(world)
    with pytest.raises((ProofRequiredError, ReportSignatureError)) as info:
        world.ledger().release(job_id="job-a", node_wallet=world.node.pubkey(), report=report)
    assert info.value.field in {"report"}
    _unmoved(world)


def test_release_with_a_made_up_proof_ref_is_refused(world: World) -> None:
    _locked(world)
    with pytest.raises(ProofRequiredError, match="verifier-signed"):
        world.ledger().release(job_id="job-a", node_wallet=world.node.pubkey(), proof_ref="sha256:forged")
    _unmoved(world)


def test_failing_report_cannot_release(world: World) -> None:
    _locked(world)
    for verdict in ("fail", "fraud"):
        with pytest.raises(ReportVerdictError, match="verdict"):
            world.ledger().release(
                job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a", verdict=verdict)
            )
    _unmoved(world)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", "job-b"),
        ("node_peer_id", "12D3KooWSomeOtherNode"),
        ("node_wallet", "other"),
        ("escrow", "other"),
    ],
)
def test_report_for_another_job_node_wallet_or_escrow_is_refused(
    world: World, field: str, value: str
) -> None:
    _locked(world)
    if value == "other":
        value = str(world.other_node.pubkey())
    with pytest.raises(ReportBindingError) as info:
        world.ledger().release(
            job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a", **{field: value})
        )
    assert info.value.field == f"report.{field}"
    _unmoved(world)


def test_report_signed_by_a_non_verifier_key_is_refused(world: World) -> None:
    """A node's own certificate (role worker) signing a 'pass' for itself."""
    _locked(world)
    with pytest.raises(ReportSignerError, match="verifier"):
        world.ledger().release(
            job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a", role="worker")
        )
    _unmoved(world)


def test_edited_report_fails_its_signature(world: World) -> None:
    _locked(world)
    forged = json.loads(world.attest("job-a", verdict="fail"))
    forged["verdict"] = "pass"
    with pytest.raises(ReportSignatureError, match="signature"):
        world.ledger().release(job_id="job-a", node_wallet=world.node.pubkey(), report=forged)
    _unmoved(world)


def test_report_for_the_right_job_cannot_pay_another_wallet(world: World) -> None:
    _locked(world)
    report = world.attest("job-a", node_wallet=str(world.other_node.pubkey()))
    with pytest.raises(WrongRecipientError):
        world.ledger().release(job_id="job-a", node_wallet=world.other_node.pubkey(), report=report)
    _unmoved(world)


def test_verifier_refuses_to_cosign_a_release_that_pays_someone_else(world: World) -> None:
    """Bypass the ledger's own checks: hand the verifier a message paying another wallet with a valid
    report. The verifier reads the escrow record itself and refuses; nothing is signed."""
    _locked(world)
    ledger = world.ledger()
    instructions = txbuild.settle_escrow(
        payer=world.payer.pubkey(),
        escrow=txbuild.escrow_address(world.payer.pubkey(), "job-a", world.user.pubkey()),
        mint=world.mint,
        decimals=6,
        multisig=world.multisig,
        recipient_wallet=world.other_node.pubkey(),
        amount=10_000,
        authority_signers=[world.coordinator.pubkey(), world.verifier.pubkey()],
        memo_text=f"cyxwiz:escrow:release:job-a:report={'cd' * 32}",
    )
    from solders.message import Message

    blockhash, _ = world.chain.latest_blockhash()
    message = bytes(Message.new_with_blockhash(instructions, world.payer.pubkey(), blockhash))
    request = CosignRequest(kind="release", job_id="job-a", message=message, report=world.attest("job-a"))
    with pytest.raises(CosignRefusedError, match="whole escrow"):
        ledger._cosigner().cosign(request)
    refund_as_release = CosignRequest(kind="refund", job_id="job-a", message=message)
    with pytest.raises(CosignRefusedError):
        ledger._cosigner().cosign(refund_as_release)
    _unmoved(world)


def test_refund_after_a_failing_report_cites_it_and_a_passing_one_cannot_refund(world: World) -> None:
    _locked(world)
    ledger = world.ledger()
    with pytest.raises(ReportVerdictError):
        ledger.refund(job_id="job-a", reason="claimed failed", report=world.attest("job-a"))
    _unmoved(world)
    record = ledger.refund(
        job_id="job-a", reason="verification failed", report=world.attest("job-a", verdict="fail")
    )
    assert record.state is EscrowState.REFUNDED and world.token(world.user) == USER_FUNDS
    [refund] = [i for i in ledger.store.intents("job-a") if i.kind == "refund"]
    memo = bytes(VersionedTransaction.from_bytes(refund.tx).message.instructions[-1].data).decode()
    assert memo == f"cyxwiz:escrow:refund:job-a:report={'cd' * 32}"


def test_a_verifier_certificate_revoked_at_the_ca_releases_nothing_more(tmp_path: Path) -> None:
    """A6 with F1: the policy re-reads the CRL when it changes; no restart needed."""
    fresh = make_pki(tmp_path / "pki")
    fields = {"job_id": "job-a", "node_peer_id": NODE_PEER, "node_wallet": "w", "escrow": "e"}
    report = fresh.sign(**fields)
    assert fresh.policy.verify_signature(report.to_json()).verdict == "pass"  # and now cached
    fresh.dev.revoke(fresh.dev.verifier_cert)
    with pytest.raises(ReportSignerError, match="revoked"):
        fresh.policy.verify_signature(report.to_json())


def test_settlement_memo_is_read_back_from_the_signed_transaction(world: World) -> None:
    _locked(world)
    ledger = world.ledger()
    assert ledger.settlement_memo(job_id="job-a") is None
    ledger.release(job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a"))
    assert ledger.settlement_memo(job_id="job-a") == f"cyxwiz:escrow:release:job-a:report={'cd' * 32}"
