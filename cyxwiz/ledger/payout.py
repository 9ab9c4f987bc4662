"""A node's payout wallet, set only by the node's own certificate key (issue 17; SPEC F1, A5, threat I).

The coordinator faces nodes and users; whatever it stores it could rewrite if compromised. So a node's
payout wallet is not a database value but a statement the node signs with its certificate's Ed25519 key
(its PeerID): ``{"v": 1, "peer_id": …, "wallet": …, "issued_at": …}`` in canonical JSON (RFC 8785),
prefixed by :data:`DOMAIN` so no other signed document of the node (a completion proof, a TLS handshake)
can be replayed as one. The coordinator refuses a statement the caller's certificate did not sign, and
keeps the newest one per node (``issued_at`` only grows); the verifier service re-checks the stored
statement against the node certificate the coordinator holds (which must chain to the CA) before it
attests a release to that wallet, so a rewritten wallet row gets a ``fail``, never a ``pass``.

Which statement counts is bound to the key that did the work: the key that signed the completion proof, or
a key it renewed into. At each renewal the node's *old* key signs a :class:`RenewalLink` to the new
PeerID (:data:`LINK_DOMAIN`); :func:`linked_keys` follows only such links, so a certificate of another key
listed under the node by the coordinator — however genuine — never states the node's wallet.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cyxwiz.errors import AuthorizationError, ConflictError, ValidationError
from cyxwiz.verification.canonical import canonical_json

# The renewal link is one document for the payout, the stake, the issuer and the verifier: it lives beside
# the proof (the verification package imports nothing of the ledger) and is re-exported from here.
from cyxwiz.verification.renewal_links import (
    LINK_DOMAIN,
    LINK_FIELD,
    MAX_LINKS,
    RenewalLink,
    RenewalLinkError,
    SignedRenewalLink,
    _issued_at,
    _now_ms,
    _signature,
    earlier_keys,
    linked_keys,
)

__all__ = [
    "DOMAIN",
    "FIELD",
    "LINK_DOMAIN",
    "LINK_FIELD",
    "MAX_LINKS",
    "MAX_SKEW_S",
    "RenewalLink",
    "RenewalLinkError",
    "SignedRenewalLink",
    "SignedWalletStatement",
    "StaleWalletStatementError",
    "VERSION",
    "WalletStatement",
    "WalletStatementError",
    "_issued_at",
    "_now_ms",
    "_signature",
    "check_newer",
    "earlier_keys",
    "linked_keys",
]

#: Domain separation: these bytes start every signed wallet statement and nothing else cyxwiz signs.
DOMAIN = b"cyxwiz-payout-wallet-v1\n"
VERSION = 1
#: How far ahead of the coordinator's clock a statement may be dated: a statement from the future would
#: outrank every later honest one (the newest wins) and lock the node out of changing its wallet.
MAX_SKEW_S = 300
FIELD = "wallet_statement"


class WalletStatementError(AuthorizationError):
    """A payout wallet statement not signed by the certificate it claims (another node's key, edited)."""

    code = "wallet-statement-signature"


class StaleWalletStatementError(ConflictError):
    """A statement older than the one the node already gave (a replay of an earlier wallet)."""

    code = "wallet-statement-stale"


@dataclass(frozen=True, kw_only=True)
class WalletStatement:
    """What the node signs: this PeerID is paid into this wallet, as of ``issued_at`` (Unix time in
    milliseconds: a node that changes its wallet twice within a second still gets a newer statement)."""

    peer_id: str
    wallet: str
    issued_at: int

    def to_dict(self) -> dict[str, Any]:
        return {"v": VERSION, "peer_id": self.peer_id, "wallet": self.wallet, "issued_at": self.issued_at}

    def message(self) -> bytes:
        """The exact bytes the node's key signs."""
        return DOMAIN + canonical_json(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class SignedWalletStatement:
    statement: WalletStatement
    #: Base64 of the Ed25519 signature over :meth:`WalletStatement.message`.
    signature: str

    @classmethod
    def sign(
        cls, *, key: Ed25519PrivateKey, wallet: str, issued_at: int | None = None
    ) -> SignedWalletStatement:
        """The node's statement that its PeerID (the key's) is paid into ``wallet``."""
        from cyxwiz.pki.peerid import peer_id

        statement = WalletStatement(
            peer_id=peer_id(key),
            wallet=_wallet(wallet, field="wallet"),
            issued_at=_now_ms() if issued_at is None else issued_at,
        )
        signature = base64.b64encode(key.sign(statement.message())).decode()
        return cls(statement=statement, signature=signature)

    @classmethod
    def from_dict(cls, data: object) -> SignedWalletStatement:
        """Parse strictly: exactly the fields above, the version known, the wallet a public key."""
        if not isinstance(data, Mapping) or set(data) != {"statement", "signature"}:
            raise ValidationError("must be {statement, signature}", field=FIELD, rule="F1")
        body, signature = data["statement"], data["signature"]
        if not isinstance(body, Mapping) or set(body) != {"v", "peer_id", "wallet", "issued_at"}:
            raise ValidationError("statement must be {v, peer_id, wallet, issued_at}", field=FIELD, rule="F1")
        if body["v"] != VERSION:
            raise ValidationError(f"unknown statement version {body['v']!r}", field=f"{FIELD}.v", rule="F1")
        issued = _issued_at(body["issued_at"], field=FIELD, rule="F1")
        peer = body["peer_id"]
        if not isinstance(peer, str) or not 0 < len(peer) <= 128:
            raise ValidationError("peer_id must be a PeerID", field=f"{FIELD}.peer_id", rule="A5")
        signature = _signature(signature, field=FIELD, rule="F1")
        wallet = _wallet(body["wallet"], field=f"{FIELD}.wallet")
        return cls(
            statement=WalletStatement(peer_id=peer, wallet=wallet, issued_at=issued), signature=signature
        )

    def to_dict(self) -> dict[str, Any]:
        return {"statement": self.statement.to_dict(), "signature": self.signature}

    def verify(self, certificate: x509.Certificate) -> WalletStatement:
        """The statement, when ``certificate``'s key signed it for that certificate's PeerID; else
        :class:`WalletStatementError`. Whether the certificate itself is valid is the caller's check (the
        TLS handshake at the coordinator, the chain check at the verifier)."""
        from cyxwiz.pki.peerid import peer_id

        if peer_id(certificate) != self.statement.peer_id:
            raise WalletStatementError(
                "the wallet statement names another PeerID than the certificate", field=FIELD, rule="A5"
            )
        public = certificate.public_key()
        if not isinstance(public, Ed25519PublicKey):
            raise WalletStatementError("the certificate key is not Ed25519", field=FIELD, rule="A2")
        try:
            public.verify(base64.b64decode(self.signature, validate=True), self.statement.message())
        except (InvalidSignature, binascii.Error, ValueError):
            raise WalletStatementError(
                "the wallet statement is not signed by the certificate's key", field=FIELD, rule="F1"
            ) from None
        return self.statement

    def check_fresh(self, *, now: float | None = None) -> None:
        """Refuse a statement dated ahead of this clock (``now``: Unix seconds) by more than
        :data:`MAX_SKEW_S`."""
        current = time.time() if now is None else now
        if self.statement.issued_at > (current + MAX_SKEW_S) * 1000:
            raise ValidationError(
                "issued_at is in the future", field=f"{FIELD}.issued_at", rule="F1", hint="check the clock"
            )


def _wallet(value: object, *, field: str) -> str:
    # Not cyxwiz.ledger.records.check_wallet: the node agent imports this module, not the escrow store.
    from solders.pubkey import Pubkey

    if isinstance(value, str) and 32 <= len(value) <= 44:
        try:
            return str(Pubkey.from_string(value))
        except ValueError:
            pass
    raise ValidationError("wallet is not a base58 public key", field=field, rule="F1")


def check_newer(current: Mapping[str, Any] | None, new: SignedWalletStatement) -> None:
    """The newest statement wins (``issued_at`` only grows): an older one, or another one with the same
    ``issued_at``, is a replay of an earlier wallet and refused; the very same statement again is fine."""
    if current is None:
        return
    held = SignedWalletStatement.from_dict(current)
    if held == new:
        return
    if new.statement.issued_at <= held.statement.issued_at:
        raise StaleWalletStatementError(
            f"the node already gave a wallet statement issued at {held.statement.issued_at}; "
            f"this one ({new.statement.issued_at}) is not newer",
            field=f"{FIELD}.issued_at",
            rule="F1",
        )
