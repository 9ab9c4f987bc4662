"""A lock funded by the user's own client: the message it signs, and the checks before it is sent (F1, F3).

The control plane never needs the user's key: :meth:`EscrowLedger.funding_message` builds the lock
transaction's message (fee payer = the control plane), the user's client signs it, and
:func:`create_signed` re-builds the expected message (or knows the bytes as its own), compares it byte
for byte, checks the user's
signature, adds the fee payer's and runs the intent protocol.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from cyxwiz.errors import AuthorizationError, EscrowError, LedgerError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.records import EscrowRecord, check_amount, check_job_id, check_wallet
from cyxwiz.ledger.store import EscrowState, NewIntent

if TYPE_CHECKING:
    from cyxwiz.ledger.ledger import EscrowLedger


def create_signed(
    ledger: EscrowLedger,
    *,
    job_id: str,
    user_wallet: str | Pubkey,
    amount: int,
    message: bytes,
    user_signature: Signature | str,
    deadline: dt.datetime | None = None,
    run_id: str | None = None,
    owner: str | None = None,
    signed_here: bool = False,
) -> EscrowRecord:
    """``signed_here``: the user's signature was just made in this process with the wallet's own key
    (:meth:`EscrowLedger.create`), so it is good by construction; a client's is always verified."""
    check_job_id(job_id)
    check_amount(amount, minimum=ledger.minimum_payment)
    user = check_wallet(user_wallet, field="user_wallet")
    signature = user_signature if isinstance(user_signature, Signature) else _signature(user_signature)
    issued = _issued_here(ledger, message, (job_id, str(user), amount, owner))
    if issued is None:
        try:
            parsed = Message.from_bytes(message)
        except Exception:  # solders raises its own parse errors
            raise EscrowError("the funding message does not parse", field="message", rule="F1") from None
        user_token = txbuild.token_account_of(user, ledger.mint)
        expected = _lock(ledger, job_id, user, amount, owner, user_token)
        if bytes(Message.new_with_blockhash(expected, ledger.payer_key, parsed.recent_blockhash)) != message:
            raise EscrowError(
                "the funding message is not the lock of this amount from this wallet for this job",
                field="message",
                rule="F1",
            )
    else:
        parsed, user_token = issued
    if not signed_here and not signature.verify(user, message):
        raise AuthorizationError("the user's signature does not verify", field="user_signature", rule="F1")
    escrow = txbuild.escrow_address(ledger.payer_key, job_id, user)
    tx = Transaction.populate(parsed, [txbuild.sign_message(ledger._payer, parsed, message), signature])
    new = NewIntent(
        kind="create",
        signature=str(tx.signatures[0]),
        tx=bytes(tx),
        last_valid_height=ledger._last_valid(parsed),
        target_state=EscrowState.LOCKED,
    )
    intent = ledger.store.insert_creating(
        row={
            "job_id": job_id,
            "amount": amount,
            "mint": str(ledger.mint),
            "user_wallet": str(user),
            "user_token_account": str(user_token),
            "escrow_account": str(escrow),
            "deadline": deadline,
            "run_id": run_id,
        },
        intent=new,
    )
    try:
        finished = ledger._driver.drive(intent, rebuild=None)
    except LedgerError as exc:
        ledger._record_audit(
            "create", job_id, success=False, amount=amount, source=str(user_token), reason=exc.code
        )
        raise
    record = EscrowRecord.from_row(finished.row) if finished.row else ledger.status(job_id=job_id)
    if not finished.concluded:  # the reconciler saw it land first and audited it
        return record
    ledger._record_audit(
        "create", job_id, success=True, amount=amount, source=str(user_token), destination=str(escrow),
        tx_signature=record.create_signature,
    )  # fmt: skip
    return record


def _signature(text: str) -> Signature:
    try:
        return Signature.from_string(text)
    except Exception:  # solders raises its own parse errors
        raise AuthorizationError("not a base58 signature", field="user_signature", rule="F1") from None


def funding_message(ledger: EscrowLedger, *, job_id: str, user_wallet: str | Pubkey, amount: int) -> bytes:
    """The lock transaction's message for the user's own client to sign (the fee payer signs later)."""
    check_job_id(job_id)
    check_amount(amount, minimum=ledger.minimum_payment)
    user = check_wallet(user_wallet, field="user_wallet")
    user_token = txbuild.token_account_of(user, ledger.mint)
    instructions = _lock(ledger, job_id, user, amount, None, user_token)
    blockhash, last_valid = ledger.latest_blockhash()
    if max(len(ledger._valid_until), len(ledger._issued)) > 1024:  # never funded: forget old answers
        ledger._valid_until.clear()
        ledger._issued.clear()
    ledger._valid_until[str(blockhash)] = last_valid
    built = Message.new_with_blockhash(instructions, ledger.payer_key, blockhash)
    message = bytes(built)
    ledger._issued[message] = ((job_id, str(user), amount, None), built, user_token)
    return message


def _lock(  # noqa: PLR0917 - internal, one shape
    ledger: EscrowLedger, job_id: str, user: Pubkey, amount: int, owner: str | None, user_token: Pubkey
) -> list[Any]:
    return txbuild.create_escrow(
        payer=ledger.payer_key, user=user, user_token=user_token, mint=ledger.mint, decimals=ledger.decimals,
        multisig=ledger.multisig, job_id=job_id, amount=amount, rent=ledger._account_rent(), owner=owner,
    )  # fmt: skip


def _issued_here(
    ledger: EscrowLedger, message: bytes, terms: tuple[str, str, int, str | None]
) -> tuple[Message, Pubkey] | None:
    """These exact bytes were built by :func:`funding_message` here for exactly these terms (the same
    comparison as re-building them, without building the instructions a second time): the message as
    built and the user's token account it debits. Used once."""
    issued = ledger._issued.pop(message, None)
    if issued is None or issued[0] != terms:
        return None
    return issued[1], issued[2]
