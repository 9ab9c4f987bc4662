"""The node's signed payout wallet statement (issue 17; SPEC F1, A5): what it covers and what it refuses."""

from __future__ import annotations

import base64
from collections.abc import Collection
from typing import Any

import pytest
from solders.keypair import Keypair

from cyxwiz.errors import ValidationError
from cyxwiz.ledger.payout import (
    DOMAIN,
    SignedWalletStatement,
    StaleWalletStatementError,
    WalletStatementError,
    check_newer,
)
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from cyxwiz.verification.canonical import canonical_json

WALLET = str(Keypair().pubkey())


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return build_dev_pki(tmp_path_factory.mktemp("pki"), nodes=("node-1", "node-2"))


def _signed(dev: DevPKI, node: str = "node-1", **kwargs: int) -> SignedWalletStatement:
    return SignedWalletStatement.sign(key=load_private_key(dev.node_key(node)), wallet=WALLET, **kwargs)


def test_the_nodes_key_signs_its_peer_id_and_wallet_under_a_domain(dev: DevPKI) -> None:
    signed = _signed(dev, issued_at=1_700_000_000_000)
    cert = load_certificate(dev.node_cert("node-1"))
    assert signed.verify(cert).wallet == WALLET  # positive control
    assert signed.statement.peer_id == peer_id(cert)
    body = {"v": 1, "peer_id": peer_id(cert), "wallet": WALLET, "issued_at": 1_700_000_000_000}
    assert signed.statement.message() == DOMAIN + canonical_json(body)
    # The same bytes without the domain prefix (any other signed document of the node) do not verify.
    bare = load_private_key(dev.node_key("node-1")).sign(canonical_json(body))
    undomained = SignedWalletStatement(statement=signed.statement, signature=base64.b64encode(bare).decode())
    with pytest.raises(WalletStatementError, match="not signed by"):
        undomained.verify(cert)
    assert SignedWalletStatement.from_dict(signed.to_dict()) == signed


def test_another_certificate_or_an_edit_is_refused(dev: DevPKI) -> None:
    signed = _signed(dev)
    with pytest.raises(WalletStatementError, match="another PeerID"):
        signed.verify(load_certificate(dev.node_cert("node-2")))
    doc = signed.to_dict()
    doc["statement"]["wallet"] = str(Keypair().pubkey())
    with pytest.raises(WalletStatementError, match="not signed by"):
        SignedWalletStatement.from_dict(doc).verify(load_certificate(dev.node_cert("node-1")))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"v": 2}, "wallet_statement.v"),
        ({"issued_at": "soon"}, "wallet_statement.issued_at"),
        ({"issued_at": True}, "wallet_statement.issued_at"),
        ({"wallet": "not-a-key"}, "wallet_statement.wallet"),
        ({"extra": 1}, "wallet_statement"),
    ],
)
def test_malformed_statements_name_the_field(dev: DevPKI, change: dict[str, object], field: str) -> None:
    doc = _signed(dev).to_dict()
    doc["statement"] = {**doc["statement"], **change}
    with pytest.raises(ValidationError) as info:
        SignedWalletStatement.from_dict(doc)
    assert info.value.field == field


def test_the_newest_statement_wins(dev: DevPKI) -> None:
    first, later = _signed(dev, issued_at=1_000), _signed(dev, issued_at=2_000)
    check_newer(None, first)
    check_newer(first.to_dict(), later)  # positive control: a newer one replaces
    check_newer(later.to_dict(), later)  # the same one again (a retry)
    with pytest.raises(StaleWalletStatementError):
        check_newer(later.to_dict(), first)
    with pytest.raises(ValidationError, match="future"):
        _signed(dev, issued_at=10**13).check_fresh(now=1_000)


def test_renewal_links_are_followed_only_forward_and_only_when_the_old_key_signed(dev: DevPKI) -> None:
    """A7/F1: a link is the old key's signed "this new key is mine" (its own domain); :func:`linked_keys`
    follows a chain of them from a proof's key and skips a link another key signed, an edited one, a link
    into the key (backwards), and anything malformed."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cyxwiz.ledger.payout import LINK_DOMAIN, RenewalLinkError, SignedRenewalLink, linked_keys

    k0, k1, k2 = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))
    p0, p1, p2 = (peer_id(k) for k in (k0, k1, k2))
    thief = load_private_key(dev.node_key("node-2"))
    first = SignedRenewalLink.sign(old_key=k0, new_peer_id=p1)
    second = SignedRenewalLink.sign(old_key=k1, new_peer_id=p2)
    assert first.verify().new_peer_id == p1  # positive control
    assert (
        k0.public_key().verify(  # the bytes signed: the domain, then RFC 8785
            base64.b64decode(first.signature), LINK_DOMAIN + canonical_json(first.link.to_dict())
        )
        is None
    )
    forged = SignedRenewalLink.sign(old_key=thief, new_peer_id=peer_id(thief)).to_dict()
    forged["link"]["old_peer_id"] = p0  # "p0 renewed into the thief's key", signed by the thief
    edited = first.to_dict()
    edited["link"]["new_peer_id"] = peer_id(thief)
    for bad in (forged, edited):
        with pytest.raises(RenewalLinkError):
            SignedRenewalLink.from_dict(bad).verify()
    with pytest.raises(ValidationError):
        SignedRenewalLink.from_dict({"link": {}, "signature": ""})
    stored: list[dict[str, Any]] = [first.to_dict(), second.to_dict(), forged, edited, {"garbage": True}]

    def links_from(peers: Collection[str]) -> list[dict[str, Any]]:
        return [s for s in stored if "link" not in s or s["link"]["old_peer_id"] in peers]

    assert linked_keys(p0, links_from) == {p0, p1, p2}
    assert linked_keys(p1, links_from) == {p1, p2}  # never back to the key it renewed from
    assert linked_keys(p2, links_from) == {p2}
