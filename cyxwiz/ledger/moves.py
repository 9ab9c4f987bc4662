"""How one settle move is made: sign (with the verifier's co-signature), record, send, conclude (F1, F2).

The steps :class:`~cyxwiz.ledger.ledger.EscrowLedger` runs for a release, a refund, a dispute and an
arbiter's resolve, in the order of the intent protocol: build the message and collect its signatures
(:func:`signed`), compare-and-set the escrow into its transitional state with the intent (:func:`settle`),
drive the intent to its end (:func:`drive`), audit the outcome (:func:`done`). A release that could not
even be signed waits ``settling`` for the sweep (:func:`hold_release`): it never becomes a refund.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from cyxwiz.errors import ConfigError, CyxwizError, EscrowError, LedgerError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import ReportAttestation
from cyxwiz.ledger.cosign import CosignRequest
from cyxwiz.ledger.records import (
    EscrowRecord,
    MissingSignatureError,
    WrongRecipientError,
    check_proof_ref,
    check_wallet,
)
from cyxwiz.ledger.schema import EscrowState, NewIntent
from cyxwiz.ledger.store import Finished

if TYPE_CHECKING:
    from cyxwiz.ledger.ledger import CosignPlan, EscrowLedger


def settle_intent(  # noqa: PLR0917 - internal, one shape
    ledger: EscrowLedger,
    record: EscrowRecord,
    kind: str,
    wallet: Pubkey,
    signers: list[txbuild.Signer],
    cosign: CosignPlan,
) -> NewIntent:
    """A signed settle transaction (release/refund) from the escrow, or from the dispute escrow."""
    disputed = record.dispute_account is not None
    memo = f"cyxwiz:escrow:{'resolve' if disputed else kind}:{record.job_id}"
    if cosign[2] is not None and not disputed:  # the verdict this move rests on: report and audit leaf
        cited = ReportAttestation.parse(cosign[2])
        memo += f":report={cited.report_sha256}"
        if cited.audit_leaf:
            memo += f":audit={cited.audit_leaf}"
    if record.state is EscrowState.SETTLING:
        # A retry may meet the same blockhash as the refused attempt: without a difference it would be
        # the same bytes, the same signature, and never be sent again.
        memo += f":retry={len(ledger.store.intents(record.job_id))}"
    if disputed and ledger.dispute_multisig is None:
        raise ConfigError("no dispute multisig is configured", field="dispute_multisig", rule="F1")
    source = record.dispute_account or record.escrow_account
    multisig = ledger.dispute_multisig if disputed and ledger.dispute_multisig else ledger.multisig
    instructions = txbuild.settle_escrow(
        payer=ledger.payer_key,
        escrow=Pubkey.from_string(source),
        mint=ledger.mint,
        decimals=ledger.decimals,
        multisig=multisig,
        recipient_wallet=wallet,
        amount=record.amount,
        authority_signers=[ledger.key_of(k) for k in (*signers, cosign[0])],
        memo_text=memo,
        rent_owner=ledger.rent_owner,
    )
    target = EscrowState.RELEASED if kind == "release" else EscrowState.REFUNDED
    return signed(ledger, record.job_id, kind, instructions, signers, cosign, target, recipient=str(wallet))


def settle(  # noqa: PLR0917 - internal, one shape
    ledger: EscrowLedger,
    record: EscrowRecord,
    kind: str,
    wallet: Pubkey,
    signers: list[txbuild.Signer],
    cosign: CosignPlan,
    *,
    updates: dict[str, Any],
    allowed: tuple[EscrowState, ...],
    reason: str | None = None,
) -> EscrowRecord:
    transitional = EscrowState.RELEASING if kind == "release" else EscrowState.REFUNDING
    signed_record = record if "report_sha256" not in updates else _with(record, updates)
    try:
        intent = settle_intent(ledger, signed_record, kind, wallet, signers, cosign)
    except CyxwizError as exc:
        now = ledger.status(job_id=record.job_id).state
        if now is not record.state:  # moved by a concurrent caller meanwhile: the loser's precise error
            ledger._refused(kind, record.job_id, exc, destination=str(wallet))
            raise ledger.store._state_error(record.job_id, now) from exc
        if (
            kind == "release"
            and record.state is not EscrowState.DISPUTED
            and not isinstance(exc, EscrowError)
        ):
            hold_release(ledger, record, updates, exc)  # verifier or chain unreachable: not a refusal
        ledger._refused(kind, record.job_id, exc, destination=str(wallet))
        raise
    # Compare-and-set against the state this call read (one of ``allowed``): one statement, and a
    # concurrent move since then loses here exactly as before.
    expected = [record.state] if record.state in allowed else list(allowed)
    moved = ledger.store.begin_move(
        record.job_id, allowed=expected, transitional=transitional, intent=intent, updates=updates
    )
    finished = drive(
        ledger,
        record,
        kind,
        moved,
        wallet,
        rebuild=lambda: settle_intent(ledger, signed_record, kind, wallet, signers, cosign),
    )
    return done(ledger, record, kind, wallet, reason, finished)


def hold_release(
    ledger: EscrowLedger, record: EscrowRecord, updates: dict[str, Any], exc: CyxwizError
) -> None:
    """A verified release that could not even be signed (the verifier service or the chain did not
    answer) waits ``settling`` for the sweep: it never falls back to a lockable, refundable state."""
    ledger.store.update_fields(
        record.job_id, allowed=[EscrowState.LOCKED, EscrowState.SETTLING], state=EscrowState.SETTLING,
        **{k: v for k, v in updates.items() if k in ("report", "report_sha256", "proof_ref")},
    )  # fmt: skip
    ledger._record_audit(
        "alert.release-pending", record.job_id, success=False, amount=record.amount,
        reason=f"{exc.code}: escrow settling, the sweep retries",
    )  # fmt: skip


def drive(
    ledger: EscrowLedger, record: EscrowRecord, kind: str, intent: Any, dest: Pubkey, *, rebuild: Any
) -> Finished:
    try:
        return ledger._driver.drive(intent, rebuild=rebuild)
    except LedgerError as exc:
        after = ledger.status(job_id=record.job_id).state
        pending = kind == "release" and after in (EscrowState.SETTLING, EscrowState.RELEASING)
        action = "alert.release-pending" if pending else kind
        ledger._record_audit(
            action, record.job_id, success=False, amount=record.amount, destination=str(dest),
            reason=f"{exc.code}: escrow {after.value}",
        )  # fmt: skip
        raise


def done(  # noqa: PLR0917 - internal, one shape
    ledger: EscrowLedger,
    record: EscrowRecord,
    kind: str,
    dest: Pubkey,
    reason: str | None,
    finished: Finished,
) -> EscrowRecord:
    """The settled record; audited by whoever concluded the move's intent, so a release the lifecycle and
    the sweep both saw land has one record (H2, F2)."""
    done = EscrowRecord.from_row(finished.row) if finished.row else ledger.status(job_id=record.job_id)
    if not finished.concluded:
        return done
    ledger._record_audit(
        kind, record.job_id, success=True, amount=record.amount,
        source=record.dispute_account or record.escrow_account, destination=str(dest),
        tx_signature=done.settle_signature, reason=reason or done.resolution,
    )  # fmt: skip
    return done


def signed(  # noqa: PLR0917 - internal, one shape
    ledger: EscrowLedger,
    job_id: str,
    kind: str,
    instructions: list[Any],
    signers: list[txbuild.Signer],
    cosign: CosignPlan | None,
    target: EscrowState,
    recipient: str | None = None,
) -> NewIntent:
    blockhash, last_valid = ledger.latest_blockhash()
    message = Message.new_with_blockhash(instructions, ledger.payer_key, blockhash)
    raw = bytes(message)
    signatures = {ledger.key_of(k): txbuild.sign_message(k, message, raw) for k in (ledger._payer, *signers)}
    if cosign is not None:
        cosigner, cosign_kind, report = cosign
        request = CosignRequest(kind=cosign_kind, job_id=job_id, message=raw, report=report)
        signatures[ledger.key_of(cosigner)] = cosigner.cosign(request)
    required = message.account_keys[: message.header.num_required_signatures]
    missing = [str(k) for k in required if k not in signatures]
    if missing:
        raise MissingSignatureError(f"no signature for {missing}", field="signers", rule="F1")
    tx = Transaction.populate(message, [signatures[k] for k in required])
    return NewIntent(
        kind=kind,
        signature=str(tx.signatures[0]),
        tx=bytes(tx),
        last_valid_height=last_valid,
        target_state=target,
        recipient_wallet=recipient,
    )


def release_checks(
    ledger: EscrowLedger, job_id: str, node_wallet: str | Pubkey, report: object, proof_ref: str | None
) -> tuple[EscrowRecord, Pubkey, ReportAttestation]:
    record = ledger.status(job_id=job_id)
    wallet = check_wallet(node_wallet, field="node_wallet")
    if proof_ref is not None:
        check_proof_ref(proof_ref)
    ledger._require_state(record, EscrowState.LOCKED, EscrowState.SETTLING)
    if record.node_wallet is None or record.node_peer_id is None:
        raise WrongRecipientError(
            "no node (PeerID and wallet) is assigned to this job",
            field="node_peer_id" if record.node_wallet else "node_wallet",
            rule="F1",
            hint="call assign() at dispatch",
        )
    if str(wallet) != record.node_wallet:
        raise WrongRecipientError(
            "release to a wallet other than the assigned node's is refused",
            field="node_wallet",
            rule="F1",
        )
    attestation = ledger._trust().check(
        report,
        job_id=record.job_id,
        node_peer_id=record.node_peer_id,
        node_wallet=record.node_wallet,
        escrow=record.escrow_account,
    )
    return record, wallet, attestation


def settlement_memo(ledger: EscrowLedger, job_id: str) -> str | None:
    from solders.transaction import VersionedTransaction

    from cyxwiz.ledger.schema import IntentStatus

    signature = ledger.status(job_id=job_id).settle_signature
    for intent in ledger.store.intents(job_id, status=IntentStatus.CONFIRMED):
        if intent.signature == signature:
            message = VersionedTransaction.from_bytes(intent.tx).message
            return bytes(message.instructions[-1].data).decode("utf-8", errors="replace")
    return None


def _with(record: EscrowRecord, updates: dict[str, Any]) -> EscrowRecord:
    return replace(record, **{k: v for k, v in updates.items() if k in EscrowRecord.__dataclass_fields__})
