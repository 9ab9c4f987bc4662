"""Escrow funding signed by the user's own client: the control plane never holds a user's key (F1, C2).

The user's client builds the lock message for one job itself — allocate the job's escrow token account
(owned by the 2-of-3 multisig), move the payment in from the user's own token account, a memo naming the
job and the submitting user — exactly as :meth:`EscrowLedger.funding_message` would, from public terms, and
signs it with the wallet key it keeps. Only the message and the signature travel. The coordinator checks
them at the door (no key: :func:`check_funding`); the lifecycle hands them to
:meth:`EscrowLedger.create_signed`, which rebuilds and compares the message again, adds the fee payer's
signature and sends.

    terms = view.funding_terms()          # public: mint, multisig, fee payer, rent, a recent blockhash
    funding = sign_funding(terms, wallet=keypair, job_id="job-…", amount=5_000_000, user="alice")
    lock_signed(ledger, funding, amount=5_000_000, user="alice")                       # control plane
"""

from __future__ import annotations

import base64
import binascii
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.errors import ValidationError
from cyxwiz.ids import JOB_ID
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.chain import Chain
from cyxwiz.ledger.records import check_amount, check_job_id, check_wallet

if TYPE_CHECKING:
    import datetime as dt

    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.records import EscrowRecord

#: A lock message is one legacy message of four instructions: far below Solana's packet limit.
MAX_FUNDING_BYTES = 1232

#: Job ids a client may choose for a job it funds: random, unguessable, one escrow each.


class FundingError(ValidationError):
    """The signed funding is not the lock this job needs (wrong job, amount, authority, or signer)."""

    code = "funding-refused"


@dataclass(frozen=True, kw_only=True)
class FundingTerms:
    """What a client needs to sign a lock: all public (served by ``GET /v1/escrow/terms``)."""

    mint: str
    decimals: int
    multisig: str
    #: The control plane's fee payer: it pays the escrow account's rent and the fee, and signs last.
    payer: str
    rent: int
    blockhash: str
    last_valid_height: int
    minimum_payment: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "mint": self.mint,
            "decimals": self.decimals,
            "multisig": self.multisig,
            "payer": self.payer,
            "rent": self.rent,
            "blockhash": self.blockhash,
            "last_valid_height": self.last_valid_height,
            "minimum_payment": self.minimum_payment,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FundingTerms:
        try:
            return cls(
                mint=str(data["mint"]),
                decimals=int(data["decimals"]),
                multisig=str(data["multisig"]),
                payer=str(data["payer"]),
                rent=int(data["rent"]),
                blockhash=str(data["blockhash"]),
                last_valid_height=int(data["last_valid_height"]),
                minimum_payment=int(data["minimum_payment"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"escrow terms are incomplete: {exc}", field="terms") from None


@dataclass(frozen=True, kw_only=True)
class Funding:
    """A signed lock for one job as the client hands it over (``job_id``, ``wallet``, ``message``,
    ``signature``): the message bytes and the wallet's signature over them."""

    job_id: str
    wallet: str
    message: bytes
    signature: str

    def to_dict(self) -> dict[str, str]:
        return {
            "job_id": self.job_id,
            "wallet": self.wallet,
            "message": base64.b64encode(self.message).decode("ascii"),
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: object) -> Funding:
        if not isinstance(data, dict) or set(data) != {"job_id", "wallet", "message", "signature"}:
            raise ValidationError(
                "funding is an object with job_id, wallet, message and signature", field="funding", rule="F1"
            )
        job_id, wallet, text, signature = data["job_id"], data["wallet"], data["message"], data["signature"]
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise ValidationError(
                "must be a job id in canonical form (job-<20 hex>)", field="funding.job_id", rule="G1"
            )
        check_wallet(wallet, field="funding.wallet")
        if not isinstance(text, str) or len(text) > 2 * MAX_FUNDING_BYTES:
            raise ValidationError("must be a base64 message", field="funding.message", rule="F1")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("not base64", field="funding.message", rule="F1") from None
        try:
            Signature.from_string(str(signature))
        except ValueError:
            raise ValidationError("not a base58 signature", field="funding.signature", rule="F1") from None
        return cls(job_id=job_id, wallet=str(wallet), message=raw, signature=str(signature))


#: A cluster's rent-exempt minimum for an account size does not change: ask each chain once, not per lock.
_RENT: weakref.WeakKeyDictionary[Chain, int] = weakref.WeakKeyDictionary()


def terms_from_chain(
    chain: Chain, *, mint: Pubkey, decimals: int, multisig: Pubkey, payer: Pubkey, minimum_payment: int
) -> FundingTerms:
    """One RPC round trip (the latest blockhash); the rent is asked once per chain."""
    rent = _RENT.get(chain)
    if rent is None:
        rent = _RENT[chain] = chain.minimum_rent(txbuild.RENT_SIZES["account"])
    blockhash, last_valid = chain.latest_blockhash()
    return FundingTerms(
        mint=str(mint),
        decimals=decimals,
        multisig=str(multisig),
        payer=str(payer),
        rent=rent,
        blockhash=str(blockhash),
        last_valid_height=last_valid,
        minimum_payment=minimum_payment,
    )


def escrow_of(terms: FundingTerms, job_id: str, *, wallet: Pubkey) -> Pubkey:
    """The job's escrow account (seeded from the fee payer, the job id and the funding wallet, as the
    ledger makes it)."""
    return txbuild.escrow_address(Pubkey.from_string(terms.payer), job_id, wallet)


def lock_message(
    terms: FundingTerms, *, wallet: Pubkey, job_id: str, amount: int, user: str, blockhash: Hash
) -> Message:
    """The message :meth:`EscrowLedger.create_signed` accepts for this lock, with ``user`` in its memo."""
    mint, payer = Pubkey.from_string(terms.mint), Pubkey.from_string(terms.payer)
    instructions = txbuild.create_escrow(
        payer=payer,
        user=wallet,
        user_token=txbuild.token_account_of(wallet, mint),
        mint=mint,
        decimals=terms.decimals,
        multisig=Pubkey.from_string(terms.multisig),
        job_id=job_id,
        amount=amount,
        rent=terms.rent,
        owner=user,
    )
    return Message.new_with_blockhash(instructions, payer, blockhash)


def sign_funding(terms: FundingTerms, *, wallet: Keypair, job_id: str, amount: int, user: str) -> Funding:
    """Client side: ``user``'s lock of ``amount`` for ``job_id``, signed by their own wallet key."""
    check_job_id(job_id)
    check_amount(amount, minimum=terms.minimum_payment)
    message = bytes(
        lock_message(
            terms,
            wallet=wallet.pubkey(),
            job_id=job_id,
            amount=amount,
            user=user,
            blockhash=Hash.from_string(terms.blockhash),
        )
    )
    return Funding(
        job_id=job_id,
        wallet=str(wallet.pubkey()),
        message=message,
        signature=str(wallet.sign_message(message)),
    )


def check_funding(funding: Funding, *, terms: FundingTerms, job_id: str, amount: int, user: str) -> None:
    """At the door, with no key: refuse anything but ``user``'s exact lock of ``amount`` for ``job_id``
    under this ledger's multisig, signed by the wallet it names (F1, F3, C2). The ledger checks again."""
    check_job_id(job_id)
    check_amount(amount, minimum=terms.minimum_payment)
    if funding.job_id != job_id:
        raise FundingError("the funding was signed for another job", field="funding.job_id", rule="F1")
    if len(funding.message) > MAX_FUNDING_BYTES:
        raise FundingError("message too large", field="funding.message", rule="F1")
    try:
        parsed = Message.from_bytes(funding.message)
    except Exception:  # solders raises its own parse errors
        raise FundingError("not a Solana message", field="funding.message", rule="F1") from None
    wallet = check_wallet(funding.wallet, field="funding.wallet")
    expected = lock_message(
        terms, wallet=wallet, job_id=job_id, amount=amount, user=user, blockhash=parsed.recent_blockhash
    )
    if bytes(expected) != funding.message:
        # Another amount, mint, escrow authority, owner, extra instruction: not this job's lock.
        raise FundingError(
            f"the message is not {user}'s escrow lock of {amount} base units for {job_id} from "
            f"{funding.wallet} under the control plane's multisig",
            field="funding.message",
            rule="F1",
        )
    if not Signature.from_string(funding.signature).verify(wallet, funding.message):
        raise FundingError("the wallet's signature does not verify", field="funding.signature", rule="F1")


def lock_signed(
    ledger: EscrowLedger,
    funding: Funding,
    *,
    amount: int,
    user: str,
    deadline: dt.datetime | None = None,
    run_id: str | None = None,
) -> EscrowRecord:
    """Control plane: lock the escrow from the user's signed message (the ledger re-checks it)."""
    return ledger.create_signed(
        job_id=funding.job_id,
        user_wallet=funding.wallet,
        amount=amount,
        message=funding.message,
        user_signature=funding.signature,
        owner=user,
        deadline=deadline,
        run_id=run_id,
    )
