"""Every long-lived key kind signs through a SoftHSM2 key (A7 with B4, H4, F1): a token, an audit
checkpoint and an escrow release, each with the attack beside it (a key the verifier does not trust)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from cyxwiz.audit import AuditLog
from cyxwiz.audit.digest import check_signature
from cyxwiz.audit.verify import verify_log
from cyxwiz.errors import CyxwizError, TokenError
from cyxwiz.keys import as_private_key, create_key_source, open_key_source, public_raw
from cyxwiz.keys.solana import SourceSigner
from cyxwiz.ledger import provision
from cyxwiz.ledger.chain import LocalChain
from cyxwiz.ledger.store import EscrowState
from cyxwiz.tokens import KeyRing, TokenIssuer, TokenKind, TokenVerifier
from tests._softhsm import HsmToken
from tests.audit.conftest import ManualClock, sample_event
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, build_world, make_pki


def test_token_signing_key_in_the_token(softhsm: HsmToken) -> None:
    uri = softhsm.new_uri("token-signing")
    create_key_source(uri)
    ring = KeyRing.from_file(Path(uri))  # what CYXWIZ_TOKEN_SIGNING_KEY_FILE=pkcs11:... reaches
    issuer = TokenIssuer(keyring=ring, issuer="cyxwiz", audience="api")
    verifier = TokenVerifier.from_keyring(ring, issuer="cyxwiz", audience="api")
    token = issuer.session(user_id="alice").token
    assert verifier.verify(token, kind=TokenKind.SESSION).claims["sub"] == "alice"
    assert jwt.get_unverified_header(token)["kid"] == ring.signing_key.kid
    with pytest.raises(CyxwizError):
        ring.to_secret_json()  # the ring cannot be written out: its key never leaves the token
    # attack: the same claims and header (the HSM key's kid) signed by another token's key
    rogue = as_private_key(create_key_source(softhsm.new_uri("rogue")))
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, rogue, algorithm="EdDSA", headers=jwt.get_unverified_header(token))
    with pytest.raises(TokenError):
        verifier.verify(forged, kind=TokenKind.SESSION)


def test_audit_checkpoint_key_in_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    uri = softhsm.new_uri("audit-checkpoint")
    source = create_key_source(uri)
    clock = ManualClock(datetime(2026, 11, 20, 23, 0, tzinfo=UTC))
    with AuditLog.open(tmp_path / "audit", signing_key=source, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
        clock.advance(hours=2)
        log.record(sample_event(2))
        assert log.maintain().sealed
    digest = json.loads((tmp_path / "audit" / "audit-2026-11-20.digest.json").read_bytes())
    assert check_signature(digest, trusted=source.public_key) is None
    # the signed checkpoint (C2SP note over the Merkle tree head) was signed in the token too
    from cyxwiz.audit.checkpoint import verify_checkpoint
    from cyxwiz.audit.records import CHECKPOINT_FILE
    from cyxwiz.errors import AuditIntegrityError

    note = (tmp_path / "audit" / CHECKPOINT_FILE).read_bytes()
    assert verify_checkpoint(note, public_key=source.public_key).size >= 2
    with pytest.raises(AuditIntegrityError):
        verify_checkpoint(note, public_key=create_key_source(softhsm.new_uri("other-audit")).public_key)
    assert verify_log(tmp_path / "audit", public_key=source.public_key).ok
    # attack: another token key pinned as the signer → the digest is refused
    other = create_key_source(softhsm.new_uri("not-audit"))
    assert check_signature(digest, trusted=other.public_key) is not None
    # the env/path form opens the same key
    again = AuditLog.open(tmp_path / "audit2", signing_key=Path(uri), clock=clock, auto_maintain=False)
    try:
        assert again.signing_key is not None and again.signing_key.public_key() == source.public_key
    finally:
        again.close()


def test_escrow_release_signed_by_authority_keys_in_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    chain = LocalChain()
    w = build_world(
        chain,
        f"sqlite:///{tmp_path / 'escrow.db'}",
        fund=chain.airdrop,
        expire=chain.expire_blockhash,
        pki=make_pki(tmp_path / "pki"),
    )
    coordinator = SourceSigner(create_key_source(softhsm.new_uri("escrow-coordinator")))
    verifier = SourceSigner(open_key_source(str(create_key_source(softhsm.new_uri("escrow-verifier")).uri)))
    multisig = provision.create_multisig(
        chain, payer=w.payer, authorities=[coordinator.pubkey(), verifier.pubkey(), w.arbiter.pubkey()]
    )
    ledger = w.ledger(multisig=multisig, coordinator=coordinator, verifier=verifier)
    ledger.create(job_id="hsm-job", user=w.user, amount=200_000)
    ledger.assign(job_id="hsm-job", node_wallet=str(w.node.pubkey()), node_peer_id=NODE_PEER)
    done = ledger.release(job_id="hsm-job", node_wallet=str(w.node.pubkey()), report=w.attest("hsm-job"))
    assert done.state is EscrowState.RELEASED and w.token(w.node) == 200_000
    assert w.token_total("hsm-job") == USER_FUNDS
    # attack: a token key that is not one of the multisig's authorities cannot move an escrow
    rogue = SourceSigner(create_key_source(softhsm.new_uri("escrow-rogue")))
    bad = w.ledger(multisig=multisig, coordinator=coordinator, verifier=rogue)
    bad.create(job_id="hsm-job-2", user=w.user, amount=100_000)
    with pytest.raises(CyxwizError):
        bad.refund(job_id="hsm-job-2")
    assert bad.onchain_amount(job_id="hsm-job-2") == 100_000
    for opened in w.ledgers:
        opened.store.dispose()


def test_ledger_config_names_authority_keys_by_uri(softhsm: HsmToken, tmp_path: Path) -> None:
    """open_ledger: a pkcs11: URI in the config's keys opens a token signer; the payer stays a sealed file."""
    from solders.keypair import Keypair

    from cyxwiz.ledger.config import LedgerConfig, open_ledger
    from cyxwiz.ledger.keystore import KdfParams, write_keypair

    coordinator = create_key_source(softhsm.new_uri("cfg-coordinator"))
    verifier = create_key_source(softhsm.new_uri("cfg-verifier"))
    write_keypair(tmp_path / "payer.key", Keypair(), passphrase=b"pw", params=KdfParams.fast_for_tests())
    config = LedgerConfig(
        rpc_url="http://127.0.0.1:9", db_url=f"sqlite:///{tmp_path / 'e.db'}", mint=str(Keypair().pubkey()),
        decimals=6, multisig=str(Keypair().pubkey()), minimum_payment=1,
        keys={"payer": "payer.key", "coordinator": coordinator.uri, "verifier": verifier.uri},
        base_dir=str(tmp_path),
    )  # fmt: skip
    ledger = open_ledger(config, passphrase=b"pw")
    try:
        # The control plane holds the coordinator key only; the verifier service opens its own (F1).
        signers = [*ledger._keys("coordinator"), config.load_key("verifier")]
        assert [type(s) for s in signers] == [SourceSigner, SourceSigner]
        assert [bytes(s.pubkey()) for s in signers] == [
            public_raw(coordinator),
            public_raw(verifier),
        ]
    finally:
        ledger.close()
