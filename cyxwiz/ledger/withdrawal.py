"""Where a node's stake goes back to: a wallet the staking node's own key stated (issue 17; F1, A5, A7, I).

The stake book is a database row the coordinator writes; a coordinator that is compromised (it holds the
coordinator key and the database) could rewrite the row's ``node_wallet`` and have the withdrawal pay
itself. So a withdrawal pays only the wallet named in a :class:`StakeWithdrawal` the node signs with its
certificate's Ed25519 key — the key whose PeerID the stake was deposited under, or a key it renewed into
through renewal links each signed by the older key (:func:`cyxwiz.ledger.payout.linked_keys`) — in
canonical JSON (RFC 8785) behind :data:`DOMAIN`, so no other signed document of the node (a wallet
statement, a completion proof, a renewal link) can be replayed as one. An Ed25519 PeerID *is* its public
key, so the signature checks without a certificate; but a key can be revoked (stolen, A6), so the signer
presents its certificate beside the document and the verifier refuses one that does not chain to the
CA, is outside its validity, is on the CRL (re-read when it changes) or is not a ``worker`` certificate.
A revoked node key therefore withdraws nothing: the node's renewed certificate's key signs instead
(through the renewal link its old key signed before the compromise); with no renewal, the stake stays
locked on chain (nothing but coordinator + verifier, or the arbiter, can move it).

The verifier's co-signing policy checks the transaction message against the statement, never against the
book: the stake account it empties is the one derived from the statement's ``stake_peer_id``, the one
destination is that wallet's token account. A statement is a request to withdraw now: it is refused once
older than :data:`MAX_AGE_S`, and the verifier keeps, in its own book, the newest one it co-signed per
stake, so none is used twice (a stale one put back after a re-stake pays nothing).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.errors import AuthorizationError, ConflictError, ValidationError
from cyxwiz.ledger.payout import MAX_SKEW_S, VERSION, _issued_at, _now_ms, _signature, _wallet
from cyxwiz.verification.canonical import canonical_json

if TYPE_CHECKING:
    import datetime as dt

    from cyxwiz.ledger.stake import StakeLedger, StakeRecord

#: Domain separation: these bytes start every signed stake withdrawal and nothing else cyxwiz signs.
DOMAIN = b"cyxwiz-stake-withdrawal-v1\n"
FIELD = "withdrawal"
#: How long a signed withdrawal stays usable: it is signed for the withdrawal at hand, not kept around.
MAX_AGE_S = 3600
_BODY = {"v", "peer_id", "stake_peer_id", "wallet", "issued_at"}


class StakeWithdrawalError(AuthorizationError):
    """A withdrawal not signed by the staking node's key (nor a key it renewed into), or edited."""

    code = "stake-withdrawal-signature"


class StaleWithdrawalError(ConflictError):
    """A withdrawal outside its validity window (older than allowed, dated ahead), or not newer than one
    already co-signed for this stake."""

    code = "stake-withdrawal-stale"


@dataclass(frozen=True, kw_only=True)
class StakeWithdrawal:
    """What the node signs: pay the stake held under ``stake_peer_id`` back into ``wallet``, as of
    ``issued_at`` (Unix ms); ``peer_id`` is the signing key's PeerID (the staking key or a successor)."""

    peer_id: str
    stake_peer_id: str
    wallet: str
    issued_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": VERSION, "peer_id": self.peer_id, "stake_peer_id": self.stake_peer_id,
            "wallet": self.wallet, "issued_at": self.issued_at,
        }  # fmt: skip

    def message(self) -> bytes:
        """The exact bytes the node's key signs."""
        return DOMAIN + canonical_json(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class SignedStakeWithdrawal:
    withdrawal: StakeWithdrawal
    #: Base64 of the Ed25519 signature over :meth:`StakeWithdrawal.message`.
    signature: str
    #: The signer's certificate (PEM), outside the signed bytes (its key must be the signer's): the
    #: verifier refuses a key whose certificate does not chain, expired, is revoked or is not a worker's
    certificate: str | None = None

    @classmethod
    def sign(
        cls,
        *,
        key: Ed25519PrivateKey,
        wallet: str,
        stake_peer_id: str | None = None,
        issued_at: int | None = None,
        certificate: str | None = None,
    ) -> SignedStakeWithdrawal:
        """The node's request that its stake (held under ``stake_peer_id``, default: this key's own
        PeerID) be paid back into ``wallet``."""
        from cyxwiz.pki.peerid import peer_id

        own = peer_id(key)
        withdrawal = StakeWithdrawal(
            peer_id=own,
            stake_peer_id=_peer(stake_peer_id or own, "stake_peer_id"),
            wallet=_wallet(wallet, field=f"{FIELD}.wallet"),
            issued_at=_now_ms() if issued_at is None else issued_at,
        )
        signature = base64.b64encode(key.sign(withdrawal.message())).decode()
        return cls(withdrawal=withdrawal, signature=signature, certificate=certificate)

    @classmethod
    def from_dict(cls, data: object) -> SignedStakeWithdrawal:
        """Parse strictly: exactly the fields above, the version known, the wallet a public key."""
        if not isinstance(data, Mapping) or set(data) - {"certificate"} != {"withdrawal", "signature"}:
            raise ValidationError("must be {withdrawal, signature[, certificate]}", field=FIELD, rule="F1")
        pem = data.get("certificate")
        if pem is not None and (not isinstance(pem, str) or len(pem) > 8192):
            raise ValidationError("certificate must be one PEM text", field=f"{FIELD}.certificate", rule="A6")
        body = data["withdrawal"]
        if not isinstance(body, Mapping) or set(body) != _BODY:
            fields = ", ".join(sorted(_BODY))
            raise ValidationError(f"withdrawal must be {{{fields}}}", field=FIELD, rule="F1")
        if body["v"] != VERSION:
            raise ValidationError(f"unknown withdrawal version {body['v']!r}", field=f"{FIELD}.v", rule="F1")
        withdrawal = StakeWithdrawal(
            peer_id=_peer(body["peer_id"], "peer_id"),
            stake_peer_id=_peer(body["stake_peer_id"], "stake_peer_id"),
            wallet=_wallet(body["wallet"], field=f"{FIELD}.wallet"),
            issued_at=_issued_at(body["issued_at"], field=FIELD, rule="F1"),
        )
        signature = _signature(data["signature"], field=FIELD, rule="F1")
        return cls(withdrawal=withdrawal, signature=signature, certificate=pem)

    @classmethod
    def parse(cls, text: object) -> SignedStakeWithdrawal:
        """From the JSON text a co-sign request or the CLI carries."""
        if not isinstance(text, str) or len(text) > 16384:
            raise ValidationError("a signed withdrawal (JSON) is required", field=FIELD, rule="F1")
        try:
            data = json.loads(text)
        except ValueError:
            raise ValidationError("the signed withdrawal is not JSON", field=FIELD, rule="F1") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = {"withdrawal": self.withdrawal.to_dict(), "signature": self.signature}
        return data if self.certificate is None else {**data, "certificate": self.certificate}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def verify(self) -> StakeWithdrawal:
        """The withdrawal, when the key of its ``peer_id`` signed it; else :class:`StakeWithdrawalError`."""
        from cyxwiz.pki.peerid import public_key_from_peer_id

        try:
            public = public_key_from_peer_id(self.withdrawal.peer_id)
            public.verify(base64.b64decode(self.signature, validate=True), self.withdrawal.message())
        except (InvalidSignature, binascii.Error, ValueError, ValidationError):
            raise StakeWithdrawalError(
                "the withdrawal is not signed by the key of the PeerID it names", field=FIELD, rule="F1"
            ) from None
        return self.withdrawal


def check_withdrawal(
    signed: SignedStakeWithdrawal,
    *,
    stake_peer_id: str,
    signers: Collection[str] | None,
    newest_used: int | None = None,
    now: float | None = None,
) -> StakeWithdrawal:
    """The node's withdrawal of the stake held under ``stake_peer_id``, checked: signed by one of
    ``signers`` (the staking PeerID and the keys it renewed into by signed links; None: by any key, whose
    standing the verifier decides), for this stake, dated
    within :data:`MAX_AGE_S` of ``now`` (Unix seconds) and newer than ``newest_used`` (the newest one
    already co-signed for this stake, Unix ms). Raises the precise refusal."""
    withdrawal = signed.verify()
    if withdrawal.stake_peer_id != stake_peer_id:
        raise StakeWithdrawalError(
            f"the withdrawal is for the stake of {withdrawal.stake_peer_id}, not of {stake_peer_id}",
            field=f"{FIELD}.stake_peer_id", rule="F1",
        )  # fmt: skip
    if signers is not None and withdrawal.peer_id not in {stake_peer_id, *signers}:
        raise StakeWithdrawalError(
            f"the withdrawal is signed by {withdrawal.peer_id}, neither the staking key {stake_peer_id} "
            "nor a key it renewed into", field=f"{FIELD}.peer_id", rule="A7",
        )  # fmt: skip
    current = time.time() if now is None else now
    if withdrawal.issued_at > (current + MAX_SKEW_S) * 1000:
        raise StaleWithdrawalError(  # it would outlive MAX_AGE_S: never valid now
            "issued_at is in the future", field=f"{FIELD}.issued_at", rule="F1", hint="check the clock"
        )
    if withdrawal.issued_at < (current - MAX_AGE_S) * 1000:
        raise StaleWithdrawalError(
            f"the withdrawal was signed more than {MAX_AGE_S} s ago", field=f"{FIELD}.issued_at", rule="F1",
            hint="sign a new one: cyxwiz escrow sign-withdrawal",
        )  # fmt: skip
    if newest_used is not None and withdrawal.issued_at <= newest_used:
        raise StaleWithdrawalError(
            f"a withdrawal of this stake issued at {newest_used} was already co-signed; this one "
            f"({withdrawal.issued_at}) is not newer", field=f"{FIELD}.issued_at", rule="F2",
        )  # fmt: skip
    return withdrawal


def withdraw_stake(
    stakes: StakeLedger,
    *,
    peer_id: str,
    withdrawal: SignedStakeWithdrawal | str | None,
    now: dt.datetime | None,
) -> StakeRecord:
    """:meth:`StakeLedger.withdraw <cyxwiz.ledger.stake.StakeLedger.withdraw>`: the ledger's side."""
    from spl.token import instructions as token_ix

    from cyxwiz.errors import CyxwizError
    from cyxwiz.ledger import txbuild
    from cyxwiz.ledger.records import check_wallet
    from cyxwiz.ledger.stake import check_unstake, stake_address

    stake = stakes.book.get(peer_id)
    # A job running under any of the node's PeerIDs (a renewed one too) keeps the stake locked.
    check_unstake(stake, stakes.policy, stakes.ledger.store, now=now, peers=stakes.node_peers(peer_id))
    led = stakes.ledger
    try:  # whose key may state it (signed renewal links) is the verifier's to check, on its own clock
        if withdrawal is None:
            raise StakeWithdrawalError(
                "a stake goes back only to a wallet the staking node's key stated: no signed withdrawal",
                field=FIELD, rule="F1", hint="cyxwiz escrow sign-withdrawal",
            )  # fmt: skip
        signed = withdrawal if isinstance(withdrawal, SignedStakeWithdrawal) else (
            SignedStakeWithdrawal.parse(withdrawal)
        )  # fmt: skip
        stated = check_withdrawal(signed, stake_peer_id=peer_id, signers=None)
    except CyxwizError as exc:
        led._refused("stake.withdraw", peer_id, exc)
        raise
    account = stake_address(led.payer_key, peer_id)  # the PeerID's account, whatever the row says
    if led.chain.get_account(account) is None:
        # A withdrawal already landed (its process died before writing it down): nothing to send.
        stakes.book.update(peer_id, amount=0, withdrawn=True)
        return stakes.book.get(peer_id)
    wallet = check_wallet(stated.wallet, field="withdrawal.wallet")
    signers = led._keys("coordinator")
    # The chain's balance, not the book's: a deposit that landed but whose record a crash lost is
    # the node's too, and the account can only be closed empty.
    held = led.chain.token_amount(account) or 0
    instructions = [
        token_ix.create_idempotent_associated_token_account(led._payer.pubkey(), wallet, led.mint),
        *txbuild._move_and_close(
            escrow=account, mint=led.mint, decimals=led.decimals,
            multisig=led.multisig, dest=txbuild.token_account_of(wallet, led.mint), amount=held,
            signers=[*(k.pubkey() for k in signers), led._cosigner().pubkey()], rent_owner=led.rent_owner,
        ),
        txbuild.memo(led._payer.pubkey(), f"cyxwiz:stake:withdraw:{peer_id}"),
    ]  # fmt: skip
    try:
        # The slashes of this stake that landed: the verifier's evidence that no fraud it proved is unpaid.
        cosign = ("unstake", peer_id, landed_slashes(led, peer_id), signed.to_json())
        signature = stakes._send(instructions, signers, cosign=cosign)
    except CyxwizError as exc:
        led._refused("stake.withdraw", peer_id, exc, destination=str(wallet))
        raise
    stakes.book.update(peer_id, amount=0, withdrawn=True)
    led._record_audit(
        "stake.withdraw", peer_id, success=True, amount=held, source=str(account),
        destination=str(wallet), tx_signature=signature,
        reason=f"signed by {stated.peer_id} at {stated.issued_at}",
    )  # fmt: skip
    return stakes.book.get(peer_id)


def landed_slashes(ledger: Any, stake_peer_id: str) -> str:
    """The signed transactions (JSON list of base64) of every confirmed slash of this stake."""
    import sqlalchemy as sa

    from cyxwiz.ledger.stakebook import slashes
    from cyxwiz.ledger.store import IntentStatus

    query = sa.select(slashes.c.job_id).where(slashes.c.peer_id == stake_peer_id)
    with ledger.store._engine.connect() as conn:
        jobs = conn.execute(query).scalars().all()
    txs = [
        base64.b64encode(i.tx).decode() for job in jobs for i in ledger.store.intents(job)
        if i.kind == "slash" and i.status is IntentStatus.CONFIRMED
    ]  # fmt: skip
    return json.dumps(txs)


def _peer(value: object, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise ValidationError(f"{name} must be a PeerID", field=f"{FIELD}.{name}", rule="A5")
    return value
