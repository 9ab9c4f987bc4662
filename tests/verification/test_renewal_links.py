"""The chain of renewal links a restated proof carries from its run's trainer to its signer (issue 17;
SPEC A7, A5, F1): one document and one walk with the payout (``cyxwiz.ledger.payout`` re-exports them),
and each refusal says what breaks the chain."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.errors import ProofSignatureError
from cyxwiz.ledger import payout
from cyxwiz.pki.peerid import peer_id
from cyxwiz.verification import renewal_links
from cyxwiz.verification.canonical import canonical_json
from cyxwiz.verification.proof import build_proof, restate_proof, sign_proof, verify_proof_signature
from cyxwiz.verification.renewal_links import (
    RenewalLink,
    RenewalLinkError,
    SignedRenewalLink,
    chain_links,
    check_chain,
)


def _link(old: Ed25519PrivateKey, new: Ed25519PrivateKey) -> dict[str, Any]:
    return SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(new)).to_dict()


def test_the_payout_and_the_verifier_share_one_link_document() -> None:
    assert payout.SignedRenewalLink is SignedRenewalLink and payout.linked_keys is renewal_links.linked_keys
    assert payout.RenewalLinkError is RenewalLinkError


def test_a_chain_each_signed_by_the_older_key_is_followed() -> None:
    k0, k1, k2 = (Ed25519PrivateKey.generate() for _ in range(3))
    links = [_link(k1, k2), _link(k0, k1)]  # any order
    assert check_chain(peer_id(k0), peer_id(k0), []) == 0
    assert check_chain(peer_id(k0), peer_id(k2), links) == 2
    assert chain_links(peer_id(k0), peer_id(k2), links) == [links[1], links[0]]
    # A malformed or unsigned extra link (whoever added it) is skipped, as the payout's walk skips it.
    junk = [{"bogus": 1}, _link(k2, k0) | {"signature": _link(k1, k0)["signature"]}]
    assert check_chain(peer_id(k0), peer_id(k2), [*junk, *links]) == 2
    with pytest.raises(RenewalLinkError, match="no chain"):
        check_chain(peer_id(k2), peer_id(k0), links)  # never backwards


@pytest.mark.parametrize("attack", ["forged", "other-signer", "gap", "other-node", "malformed", "none"])
def test_a_broken_chain_is_refused_with_its_reason(attack: str) -> None:
    trainer, signer, k1, x = (Ed25519PrivateKey.generate() for _ in range(4))
    if attack == "forged":  # the signer's own key signs "trainer -> signer"
        doc = _link(signer, signer)
        doc["link"]["old_peer_id"] = peer_id(trainer)
        links, words = [doc], "not signed by the old key"
    elif attack == "other-signer":
        body = RenewalLink(old_peer_id=peer_id(trainer), new_peer_id=peer_id(signer), issued_at=1)
        sig = base64.b64encode(x.sign(body.message())).decode()
        links, words = [SignedRenewalLink(link=body, signature=sig).to_dict()], "not signed by the old key"
    elif attack == "gap":
        links, words = [_link(trainer, k1), _link(x, signer)], "no chain"
    elif attack == "other-node":
        links, words = [_link(x, signer)], "no chain"
    elif attack == "malformed":
        links, words = [{"link": {}, "signature": "x"}], "malformed"
    else:
        links, words = [], "no chain"
    with pytest.raises(RenewalLinkError, match=words) as refused:
        check_chain(peer_id(trainer), peer_id(signer), links)
    assert (refused.value.field, refused.value.rule) == ("renewal_link", "A7")
    assert chain_links(peer_id(trainer), peer_id(signer), links) == []


def test_a_proof_of_a_node_that_never_renewed_signs_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    key, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    proof = build_proof(
        job_id="j", job_spec_sha256="0" * 64, output_dir=tmp_path, node_peer_id=peer_id(key),
        cert_fingerprint_sha256="1" * 64, token_jti="t", started_at=now, finished_at=now,
    )  # fmt: skip
    body = proof.model_dump(mode="json")
    assert proof.signing_bytes() == canonical_json(
        {k: v for k, v in body.items() if k not in ("trainer_peer_id", "renewal_links")}
    )
    signed = sign_proof(proof, key)
    restated = restate_proof(
        signed, node_peer_id=peer_id(new), cert_fingerprint_sha256="2" * 64, links=[_link(key, new)],
        private_key=new,
    )  # fmt: skip
    verify_proof_signature(restated, new.public_key())
    assert restated.proof.trainer() == peer_id(key) and restated.proof.artifacts == proof.artifacts
    assert check_chain(restated.proof.trainer(), peer_id(new), restated.proof.renewal_links) == 1
    # The trainer and the links are signed: a proof's trainer cannot be swapped after signing.
    edited = restated.model_copy(
        update={"proof": restated.proof.model_copy(update={"trainer_peer_id": peer_id(new)})}
    )
    with pytest.raises(ProofSignatureError, match="signature"):
        verify_proof_signature(edited, new.public_key())
