"""The node's signed payout wallet statement (issue 17; SPEC F1, A5): what it covers and what it refuses."""

from __future__ import annotations

import base64

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
