"""Disputes on chain (F1): the funds move into a dispute escrow only the arbiter (with the verifier) can move.

:func:`dispute` (coordinator + verifier sign) moves the whole escrow into the job's dispute escrow, an SPL
token account owned by the 2-of-2 (arbiter, verifier) multisig, and closes the escrow account; from then
on coordinator + verifier together are refused by the chain itself (``MissingRequiredSignature``).
:func:`resolve` (arbiter + verifier) pays the user or the assigned node out of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from solders.pubkey import Pubkey

from cyxwiz.errors import ConfigError, CyxwizError, EscrowError
from cyxwiz.ledger import moves, txbuild
from cyxwiz.ledger.records import (
    EscrowRecord,
    WrongRecipientError,
    check_proof_ref,
    check_reason,
    check_wallet,
)
from cyxwiz.ledger.store import EscrowState, NewIntent

if TYPE_CHECKING:
    from cyxwiz.ledger.ledger import CosignPlan, EscrowLedger, Signers


def dispute(ledger: EscrowLedger, *, job_id: str, reason: str) -> EscrowRecord:
    """Move the funds into the job's dispute escrow: from then on only the arbiter's resolve (with the
    verifier) can move them, on chain (F1). Coordinator + verifier sign the move."""
    text = check_reason(reason)
    try:
        record = ledger.status(job_id=job_id)
        ledger._require_state(record, EscrowState.LOCKED, EscrowState.SETTLING)
        if ledger.dispute_multisig is None:
            raise ConfigError("no dispute multisig is configured", field="dispute_multisig", rule="F1")
        signers = ledger._keys("coordinator")
        cosign: CosignPlan = (ledger._cosigner(), "dispute", None)
    except CyxwizError as exc:
        ledger._refused("dispute", job_id, exc)
        raise
    target = txbuild.dispute_address(ledger.payer_key, job_id, record.user_wallet)
    intent = dispute_intent(ledger, record, signers, cosign)
    moved = ledger.store.begin_move(
        record.job_id, allowed=[record.state], transitional=EscrowState.DISPUTING, intent=intent,
        updates={"dispute_reason": text},
    )  # fmt: skip
    finished = moves.drive(
        ledger,
        record,
        "dispute",
        moved,
        target,
        rebuild=lambda: dispute_intent(ledger, record, signers, cosign),
    )
    return moves.done(ledger, record, "dispute", target, text, finished)


def resolve(
    ledger: EscrowLedger,
    *,
    job_id: str,
    outcome: Literal["release", "refund"],
    node_wallet: str | Pubkey | None = None,
    proof_ref: str | None = None,
) -> EscrowRecord:
    """Arbiter's decision on a disputed escrow; arbiter + verifier sign (the dispute multisig, F1)."""
    try:
        if outcome not in ("release", "refund"):
            raise EscrowError("outcome must be 'release' or 'refund'", field="outcome", rule="F1")
        record = ledger.status(job_id=job_id)
        ledger._require_state(record, EscrowState.DISPUTED)
        signers = ledger._keys("arbiter")
        cosign: CosignPlan = (ledger._cosigner(), "resolve", None)
        wallet = Pubkey.from_string(record.user_wallet)
        if outcome == "release":
            target = node_wallet if node_wallet is not None else record.node_wallet
            if target is None or str(check_wallet(target, field="node_wallet")) != record.node_wallet:
                raise WrongRecipientError(
                    "a disputed escrow is released only to the assigned node",
                    field="node_wallet",
                    rule="F1",
                )
            wallet = check_wallet(target, field="node_wallet")
    except CyxwizError as exc:
        ledger._refused(f"resolve.{outcome}", job_id, exc)
        raise
    extra: dict[str, Any] = {"resolution": outcome}
    if proof_ref is not None:
        extra["proof_ref"] = check_proof_ref(proof_ref)
    return moves.settle(
        ledger, record, outcome, wallet, signers, cosign, updates=extra, allowed=(EscrowState.DISPUTED,)
    )


def dispute_intent(
    ledger: EscrowLedger, record: EscrowRecord, signers: Signers, cosign: CosignPlan
) -> NewIntent:
    assert ledger.dispute_multisig is not None
    instructions = txbuild.dispute_escrow(
        payer=ledger.payer_key,
        escrow=Pubkey.from_string(record.escrow_account),
        mint=ledger.mint,
        decimals=ledger.decimals,
        multisig=ledger.multisig,
        dispute_multisig=ledger.dispute_multisig,
        job_id=record.job_id,
        user=record.user_wallet,
        amount=record.amount,
        rent=ledger._account_rent(),
        authority_signers=[ledger.key_of(k) for k in (*signers, cosign[0])],
    )
    target = txbuild.dispute_address(ledger.payer_key, record.job_id, record.user_wallet)
    return moves.signed(
        ledger,
        record.job_id,
        "dispute",
        instructions,
        signers,
        cosign,
        EscrowState.DISPUTED,
        recipient=str(target),
    )
