"""Anchoring (H4, issue 19): checkpoint roots as memo transactions on a real LiteSVM ledger; verify
with --anchors catches a log rewritten by someone who holds the audit key, and every forged anchor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from solders.keypair import Keypair

from cyxwiz.audit import AuditLog
from cyxwiz.audit.anchor import ANCHORS_FILE, anchor_latest, check_anchors, memo_text, read_anchors
from cyxwiz.audit.report import Kind
from cyxwiz.audit.verify import verify_log
from cyxwiz.ledger.chain import LocalChain
from tests.audit.conftest import TEST_KEY, ManualClock, sample_event

PUB = TEST_KEY.public_key()


@pytest.fixture(scope="module")
def chain() -> LocalChain:
    return LocalChain()


@pytest.fixture
def wallet(chain: LocalChain) -> Keypair:
    keypair = Keypair()
    chain.airdrop(keypair.pubkey(), 10**8)  # low value: fees only
    return keypair


def _log(log_dir: Path, clock: ManualClock, key: Ed25519PrivateKey, n: int, start: int = 0) -> None:
    with AuditLog.open(log_dir, signing_key=key, clock=clock, auto_maintain=False) as log:
        for i in range(start, start + n):
            log.record(sample_event(i))


def test_anchor_round_trip_and_idempotence(
    log_dir: Path, clock: ManualClock, chain: LocalChain, wallet: Keypair
) -> None:
    _log(log_dir, clock, TEST_KEY, 7)
    first = anchor_latest(log_dir, chain=chain, payer=wallet, public_key=PUB)
    assert first is not None and first.size == 7
    assert anchor_latest(log_dir, chain=chain, payer=wallet, public_key=PUB) is None  # nothing new
    _log(log_dir, clock, TEST_KEY, 3, start=7)
    second = anchor_latest(log_dir, chain=chain, payer=wallet, public_key=PUB)
    assert second is not None and second.size == 10
    good, bad = check_anchors(log_dir, chain=chain, anchor_key=wallet.pubkey())
    assert bad == [] and [size for size, _, _ in good] == [7, 10]
    report = verify_log(log_dir, public_key=PUB, anchored=good)
    assert report.ok, report.problems
    assert oct((log_dir / ANCHORS_FILE).stat().st_mode & 0o777) == "0o600"


def test_a_log_rewritten_and_resigned_with_the_audit_key_contradicts_its_anchor(
    log_dir: Path, clock: ManualClock, chain: LocalChain, wallet: Keypair, tmp_path: Path
) -> None:
    """The attacker has the audit key: they rebuild the whole log with other events and re-sign every
    checkpoint. Locally it verifies; the root on chain does not match."""
    _log(log_dir, clock, TEST_KEY, 6)
    assert anchor_latest(log_dir, chain=chain, payer=wallet, public_key=PUB) is not None
    anchors = (log_dir / ANCHORS_FILE).read_bytes()
    forged_dir = tmp_path / "forged"
    _log(forged_dir, clock, TEST_KEY, 6, start=100)
    (forged_dir / ANCHORS_FILE).write_bytes(anchors)
    assert verify_log(forged_dir, public_key=PUB).ok  # the local evidence is all consistent...
    good, bad = check_anchors(forged_dir, chain=chain, anchor_key=wallet.pubkey())
    assert bad == []
    report = verify_log(forged_dir, public_key=PUB, anchored=good)
    assert Kind.CHECKPOINT_MISMATCH in {p.kind for p in report.problems}  # ...the chain is not


def test_forged_anchor_records_are_refused(
    log_dir: Path, clock: ManualClock, chain: LocalChain, wallet: Keypair
) -> None:
    _log(log_dir, clock, TEST_KEY, 4)
    anchor = anchor_latest(log_dir, chain=chain, payer=wallet, public_key=PUB)
    assert anchor is not None
    path = log_dir / ANCHORS_FILE
    # 1. paid by another wallet than the pinned one
    _, bad = check_anchors(log_dir, chain=chain, anchor_key=Keypair().pubkey())
    assert bad and "pinned anchor key" in bad[0][1]
    # 2. the record claims another root than its (signed) memo
    record = json.loads(path.read_bytes())
    record["size"] = 3
    path.write_text(json.dumps(record) + "\n")
    _, bad = check_anchors(log_dir, chain=chain, anchor_key=wallet.pubkey())
    assert bad and "memo" in bad[0][1]
    # 3. a well-signed transaction that never reached the ledger
    from cyxwiz.ledger import txbuild

    chain.expire_blockhash()  # a fresh blockhash: another transaction than the one that landed
    blockhash, _ = chain.latest_blockhash()
    text = memo_text(anchor.origin, anchor.size, anchor.root)
    tx = txbuild.sign([txbuild.memo(wallet.pubkey(), text)], payer=wallet, signers=(), blockhash=blockhash)
    record = dict(
        anchor.to_json(),
        tx=__import__("base64").b64encode(bytes(tx)).decode(),
        signature=str(tx.signatures[0]),
    )
    path.write_text(json.dumps(record) + "\n")
    _, bad = check_anchors(log_dir, chain=chain, anchor_key=wallet.pubkey())
    assert bad and "does not know" in bad[0][1]
    assert len(read_anchors(log_dir)) == 1


def test_only_a_checkpoint_signed_by_the_pinned_key_is_anchored(
    log_dir: Path, clock: ManualClock, chain: LocalChain, wallet: Keypair
) -> None:
    from cyxwiz.errors import AuditIntegrityError

    _log(log_dir, clock, Ed25519PrivateKey.generate(), 2)
    with pytest.raises(AuditIntegrityError, match="another key"):
        anchor_latest(log_dir, chain=chain, payer=wallet, public_key=PUB)
