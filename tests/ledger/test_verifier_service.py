"""Split authority (F1, threat I): the verifier service is its own process with its own sealed key; it
co-signs only what its rules allow and signs verdicts whose audit leaf the settlement memo cites."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from solders.message import Message
from solders.transaction import VersionedTransaction

from cyxwiz.errors import ConfigError, DecryptionError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import ReportAttestation, ReportSignatureError
from cyxwiz.ledger.config import open_ledger
from cyxwiz.ledger.cosign import CosignRefusedError, CosignRequest
from cyxwiz.ledger.embedded import DemoLedger
from cyxwiz.ledger.keystore import load_keypair
from cyxwiz.ledger.verifier_client import RemoteCosigner
from cyxwiz.ledger.verifier_service import VerifierProcess
from tests.ledger.conftest import NODE_PEER, PASSPHRASE, Pki, World, demo_attest


def test_one_process_never_holds_two_authority_keys(demo: DemoLedger) -> None:
    for roles in (("coordinator", "verifier"), ("coordinator", "arbiter"), ("verifier",)):
        with pytest.raises(ConfigError, match="at most one escrow authority key"):
            open_ledger(demo.config, roles=roles)
    # The control plane's passphrase opens neither the verifier's nor the arbiter's key file.
    for role in ("verifier", "arbiter"):
        path = demo.config.key_path(role)
        assert path is not None
        with pytest.raises(DecryptionError):
            load_keypair(path, passphrase=PASSPHRASE.encode())


def test_verifier_service_cosigns_a_verified_release_and_refuses_forgeries(
    demo: DemoLedger, pki: Pki, verifier: VerifierProcess
) -> None:
    assert stat.S_IMODE(verifier.socket_path.stat().st_mode) == 0o600
    ledger = open_ledger(demo.config)
    amount = 3 * demo.minimum_payment
    for job in ("job-v1", "job-v2"):
        ledger.create(job_id=job, user=demo.user, amount=amount)
        ledger.assign(job_id=job, node_wallet=demo.node.pubkey(), node_peer_id=NODE_PEER)
    # Bypass the control plane's own checks: ask the verifier directly over its socket.
    remote = RemoteCosigner(socket_path=verifier.socket_path)
    escrow = txbuild.escrow_address(demo.config.pubkey("payer"), "job-v1", demo.user.pubkey())
    message = _release_message(ledger, escrow, demo.node.pubkey(), amount, "cd" * 32)
    forged: dict[str, Any] = ReportAttestation.parse(
        demo_attest(pki, demo, "job-v1", verdict="fail")
    ).to_dict()
    forged["verdict"] = "pass"
    with pytest.raises(ReportSignatureError):
        remote.cosign(
            CosignRequest(kind="release", job_id="job-v1", message=message, report=json.dumps(forged))
        )
    thief = _release_message(ledger, escrow, ledger.rent_owner, amount, "cd" * 32)
    with pytest.raises(CosignRefusedError, match="whole escrow"):
        remote.cosign(CosignRequest(kind="refund", job_id="job-v1", message=thief))
    # Positive control: the real release, co-signed by the service process.
    record = ledger.release(
        job_id="job-v1", node_wallet=demo.node.pubkey(), report=demo_attest(pki, demo, "job-v1")
    )
    assert record.state.value == "released" and ledger.onchain_amount(job_id="job-v1") == 0
    assert ledger.status(job_id="job-v2").state.value == "locked"
    remote.close()


def _release_message(ledger: Any, escrow: Any, wallet: Any, amount: int, report: str) -> bytes:
    instructions = txbuild.settle_escrow(
        payer=ledger._payer.pubkey(), escrow=escrow, mint=ledger.mint, decimals=ledger.decimals,
        multisig=ledger.multisig, recipient_wallet=wallet, amount=amount,
        authority_signers=[ledger._keys("coordinator")[0].pubkey(), ledger._cosigner().pubkey()],
        memo_text=f"cyxwiz:escrow:release:job-v1:report={report}",
    )  # fmt: skip
    blockhash, _ = ledger.chain.latest_blockhash()
    return bytes(Message.new_with_blockhash(instructions, ledger._payer.pubkey(), blockhash))


def test_verdict_is_audited_and_its_leaf_is_in_the_release_memo(local_world: World, tmp_path: Path) -> None:
    """The verifier records its verdict; the attestation carries the audit leaf; the memo cites it."""
    from cyxwiz.audit import AuditLog
    from cyxwiz.ledger.verifier_service import VerifierService
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.keys import generate_ed25519, load_private_key

    w = local_world
    ledger = w.ledger()
    ledger.create(job_id="job-a", user=w.user, amount=10_000)
    ledger.assign(job_id="job-a", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    report = {"job_id": "job-a", "passed": True, "checks": [{"name": "replay", "passed": True}]}
    with AuditLog.open(tmp_path / "audit", signing_key=generate_ed25519()) as log:
        service = VerifierService(
            keypair=w.verifier, policy=ledger.verifier_policy(),
            signing_key=load_private_key(w.pki.root / "certs" / "verifier-key.pem"),
            certificate=load_certificate(w.pki.root / "certs" / "verifier-cert.pem"),
            verify=lambda _body: (report, "pass"), audit=log,
        )  # fmt: skip
        status, answer = service.handle("POST", "/v1/verify", {
            "job_id": "job-a", "node_peer_id": NODE_PEER, "node_wallet": str(w.node.pubkey()),
            "escrow": ledger.status(job_id="job-a").escrow_account,
        })  # fmt: skip
        assert status == 200, answer
        attestation = ReportAttestation.parse(answer["attestation"])
        assert len(attestation.audit_leaf) == 64 and attestation.verdict == "pass"
        ledger.release(job_id="job-a", node_wallet=w.node.pubkey(), report=answer["attestation"])
    [release] = [i for i in ledger.store.intents("job-a") if i.kind == "release"]
    memo = bytes(VersionedTransaction.from_bytes(release.tx).message.instructions[-1].data).decode()
    assert memo.endswith(f":report={attestation.report_sha256}:audit={attestation.audit_leaf}")
    status, answer = VerifierService(
        keypair=w.verifier, policy=ledger.verifier_policy(), signing_key=None, certificate=None
    ).handle("POST", "/v1/verify", {})
    assert status == 400 and "without a verification hook" in answer["error"]["message"]
