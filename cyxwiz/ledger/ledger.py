"""EscrowLedger: per-job escrow on Solana with a crash-safe intent log (SPEC F1–F3).

Every on-chain move follows one protocol, so a process killed at any point never pays twice:

1. build and sign the transaction (the signature is fixed before anything is sent);
2. commit the escrow's compare-and-set into a transitional state together with the signed bytes
   (the intent) — a concurrent second release loses here, before signing anything;
3. send; confirm by polling the signature's status;
4. commit the final state.

After a crash, :meth:`EscrowLedger.reconcile` looks every recorded signature up on chain: landed →
finish; refused → put the escrow back; unknown with a live blockhash → re-send the *same* bytes (the
chain deduplicates by signature); unknown with an expired blockhash → it can never land, so a fresh
transaction for the same move is recorded and sent. On chain, a settle transaction closes the escrow
account, so even two different settle transactions cannot both move funds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from cyxwiz.errors import AuthorizationError, CyxwizError, EscrowError, LedgerError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.chain import Chain
from cyxwiz.ledger.intents import IntentDriver, Rebuild
from cyxwiz.ledger.records import (
    EscrowRecord,
    MissingSignatureError,
    ProofChecker,
    ProofRequiredError,
    WrongRecipientError,
    check_amount,
    check_job_id,
    check_proof_ref,
    check_reason,
    check_wallet,
)
from cyxwiz.ledger.store import EscrowState, EscrowStore, Intent, IntentStatus, NewIntent

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink


class EscrowLedger:
    """Escrow operations over any :class:`~cyxwiz.ledger.chain.Chain` (LiteSVM in-process or JSON-RPC).

    ``payer`` pays fees and the escrow accounts' rent (the coordinator's wallet, usually the coordinator
    key itself). The authority keys are those this process holds: the control plane holds coordinator and
    verifier, an admin's process holds the arbiter. ``fault`` is a test hook called with
    ``"after_record"`` / ``"after_send"`` so crash tests can kill the process at exactly those points.
    """

    def __init__(
        self,
        *,
        chain: Chain,
        store: EscrowStore,
        mint: Pubkey,
        decimals: int,
        multisig: Pubkey,
        payer: Keypair,
        coordinator: txbuild.Signer | None = None,
        verifier: txbuild.Signer | None = None,
        arbiter: txbuild.Signer | None = None,
        minimum_payment: int = 1,
        audit: AuditSink | None = None,
        proof_checker: ProofChecker | None = None,
        confirm_timeout_s: float = 30.0,
        max_attempts: int = 3,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self.chain = chain
        self.store = store
        self.mint = mint
        self.decimals = decimals
        self.multisig = multisig
        self._payer = payer
        self._coordinator = coordinator
        self._verifier = verifier
        self._arbiter = arbiter
        self.minimum_payment = minimum_payment
        self._audit = audit
        self._proof_checker = proof_checker
        self._driver = IntentDriver(
            chain=chain,
            store=store,
            confirm_timeout_s=confirm_timeout_s,
            max_attempts=max_attempts,
            fault=fault or (lambda _point: None),
        )

    def close(self) -> None:
        """Release the RPC client and database connections."""
        self.chain.close()
        self.store.dispose()

    # -- queries ----------------------------------------------------------------------------------

    def status(self, *, job_id: str) -> EscrowRecord:
        return EscrowRecord.from_row(self.store.get(check_job_id(job_id)))

    def list_escrows(self, *, states: Iterable[EscrowState] | None = None) -> list[EscrowRecord]:
        return [EscrowRecord.from_row(r) for r in self.store.list_escrows(states=states)]

    def onchain_amount(self, *, job_id: str) -> int:
        """Base units the job's escrow account holds on chain right now (0 once settled)."""
        record = self.status(job_id=job_id)
        return self.chain.token_amount(Pubkey.from_string(record.escrow_account)) or 0

    # -- operations -------------------------------------------------------------------------------

    def create(self, *, job_id: str, user: Keypair, amount: int) -> EscrowRecord:
        """Lock ``amount`` base units from the user's token account in a new escrow for the job (F1, F3)."""
        check_job_id(job_id)
        check_amount(amount, minimum=self.minimum_payment)
        user_token = txbuild.token_account_of(user.pubkey(), self.mint)
        escrow = txbuild.escrow_address(self._payer.pubkey(), job_id)
        instructions = txbuild.create_escrow(
            payer=self._payer.pubkey(),
            user=user.pubkey(),
            user_token=user_token,
            mint=self.mint,
            decimals=self.decimals,
            multisig=self.multisig,
            job_id=job_id,
            amount=amount,
            rent=self.chain.minimum_rent(txbuild.RENT_SIZES["account"]),
        )
        intent = self.store.insert_creating(
            row={
                "job_id": job_id,
                "amount": amount,
                "mint": str(self.mint),
                "user_wallet": str(user.pubkey()),
                "user_token_account": str(user_token),
                "escrow_account": str(escrow),
            },
            intent=self._signed("create", instructions, [user], EscrowState.LOCKED),
        )
        try:
            self._driver.drive(intent, rebuild=None)
        except LedgerError as exc:
            self._record_audit(
                "create", job_id, success=False, amount=amount, source=str(user_token), reason=exc.code
            )
            raise
        record = self.status(job_id=job_id)
        self._record_audit(
            "create",
            job_id,
            success=True,
            amount=amount,
            source=str(user_token),
            destination=str(escrow),
            tx_signature=record.create_signature,
        )
        return record

    def assign(self, *, job_id: str, node_wallet: str | Pubkey) -> EscrowRecord:
        """Record the node the job was dispatched to: the only wallet a release may pay (F1)."""
        wallet = check_wallet(node_wallet, field="node_wallet")
        self.store.update_fields(check_job_id(job_id), allowed=[EscrowState.LOCKED], node_wallet=str(wallet))
        return self.status(job_id=job_id)

    def release(self, *, job_id: str, node_wallet: str | Pubkey, proof_ref: str) -> EscrowRecord:
        """Pay the assigned node after verified completion; coordinator + verifier sign (F1, F2)."""
        try:
            record, wallet = self._release_checks(job_id, node_wallet, proof_ref)
            signers = self._authorities("coordinator", "verifier")
        except CyxwizError as exc:
            self._refused("release", job_id, exc, destination=str(node_wallet))
            raise
        return self._settle(
            record, "release", wallet, signers, updates={"proof_ref": proof_ref}, allowed=EscrowState.LOCKED
        )

    def _release_checks(
        self, job_id: str, node_wallet: str | Pubkey, proof_ref: str
    ) -> tuple[EscrowRecord, Pubkey]:
        record = self.status(job_id=job_id)
        wallet = check_wallet(node_wallet, field="node_wallet")
        check_proof_ref(proof_ref)
        self._require_state(record, EscrowState.LOCKED)
        if record.node_wallet is None:
            raise WrongRecipientError(
                "no node is assigned to this job",
                field="node_wallet",
                rule="F1",
                hint="call assign() at dispatch",
            )
        if str(wallet) != record.node_wallet:
            raise WrongRecipientError(
                "release to a wallet other than the assigned node's is refused",
                field="node_wallet",
                rule="F1",
            )
        if self._proof_checker is not None and not self._proof_checker(job_id=job_id, proof_ref=proof_ref):
            raise ProofRequiredError("the completion proof is not verified", field="proof_ref", rule="F1")
        return record, wallet

    def refund(self, *, job_id: str, reason: str = "job failed") -> EscrowRecord:
        """Return the funds to the user (job failed or cancelled); coordinator + verifier sign (F1)."""
        try:
            record = self.status(job_id=job_id)
            self._require_state(record, EscrowState.LOCKED)
            signers = self._authorities("coordinator", "verifier")
        except CyxwizError as exc:
            self._refused("refund", job_id, exc)
            raise
        user = Pubkey.from_string(record.user_wallet)
        return self._settle(
            record, "refund", user, signers, updates={}, allowed=EscrowState.LOCKED, reason=reason
        )

    def dispute(self, *, job_id: str, reason: str) -> EscrowRecord:
        """Freeze the escrow until an arbiter resolves it (F1)."""
        text = check_reason(reason)
        self.store.update_fields(
            check_job_id(job_id),
            allowed=[EscrowState.LOCKED],
            state=EscrowState.DISPUTED,
            dispute_reason=text,
        )
        record = self.status(job_id=job_id)
        self._record_audit("dispute", job_id, success=True, amount=record.amount, reason=text)
        return record

    def resolve(
        self,
        *,
        job_id: str,
        outcome: Literal["release", "refund"],
        node_wallet: str | Pubkey | None = None,
        proof_ref: str | None = None,
    ) -> EscrowRecord:
        """Arbiter's decision on a disputed escrow; arbiter + coordinator sign (F1)."""
        try:
            record = self.status(job_id=job_id)
            self._require_state(record, EscrowState.DISPUTED)
            signers = self._authorities("arbiter", "coordinator")
        except CyxwizError as exc:
            self._refused(f"resolve.{outcome}", job_id, exc)
            raise
        if outcome == "refund":
            user = Pubkey.from_string(record.user_wallet)
            extra: dict[str, Any] = {"resolution": "refund"}
            return self._settle(record, "refund", user, signers, updates=extra, allowed=EscrowState.DISPUTED)
        if outcome != "release":
            raise EscrowError("outcome must be 'release' or 'refund'", field="outcome", rule="F1")
        target = node_wallet if node_wallet is not None else record.node_wallet
        if target is None:
            raise WrongRecipientError("no node wallet to release to", field="node_wallet", rule="F1")
        wallet = check_wallet(target, field="node_wallet")
        extra = {"resolution": "release"}
        if proof_ref is not None:
            extra["proof_ref"] = check_proof_ref(proof_ref)
        return self._settle(record, "release", wallet, signers, updates=extra, allowed=EscrowState.DISPUTED)

    # -- recovery ---------------------------------------------------------------------------------

    def reconcile(self) -> list[EscrowRecord]:
        """Finish every move a crash left in flight; returns the escrows touched (F2)."""
        touched: list[str] = []
        for intent in self.store.intents(status=IntentStatus.PREPARED):
            touched.append(intent.job_id)
            try:
                self._recover(intent)
            except LedgerError as exc:
                self._record_audit(
                    intent.kind, intent.job_id, success=False, amount=0, reason=f"reconcile: {exc.code}"
                )
                continue  # left for the next sweep (or settled as failed); the record says why
            record = self.status(job_id=intent.job_id)
            self._record_audit(
                intent.kind,
                intent.job_id,
                success=record.state in (EscrowState.LOCKED, EscrowState.RELEASED, EscrowState.REFUNDED),
                amount=record.amount,
                destination=intent.recipient_wallet,
                tx_signature=record.settle_signature or record.create_signature,
                reason=f"reconciled after a crash: {record.state.value}",
            )
        return [self.status(job_id=job_id) for job_id in dict.fromkeys(touched)]

    def _recover(self, intent: Intent) -> None:
        status = self.chain.signature_status(intent.signature)
        if status is not None:
            self._driver.conclude(intent, status)
            return
        rebuild = self._rebuilder(intent)
        if self.chain.block_height() <= intent.last_valid_height:
            self._driver.drive(intent, rebuild=rebuild)  # re-sends the same signed bytes
        elif rebuild is None:
            self.store.abandon(
                intent, status=IntentStatus.EXPIRED, error="expired unsent", revert_to=EscrowState.VOID
            )
        else:
            self._driver.drive(self.store.replace(intent, rebuild()), rebuild=rebuild)

    def _rebuilder(self, intent: Intent) -> Rebuild | None:
        if intent.kind == "create" or intent.recipient_wallet is None:
            return None  # the user's signature cannot be re-made here
        record = self.status(job_id=intent.job_id)
        names = (
            ("arbiter", "coordinator")
            if intent.prior_state == EscrowState.DISPUTED
            else ("coordinator", "verifier")
        )
        signers = self._authorities(*names)
        wallet = Pubkey.from_string(intent.recipient_wallet)
        return lambda: self._settle_intent(record, intent.kind, wallet, signers)

    # -- internals --------------------------------------------------------------------------------

    def _settle(
        self,
        record: EscrowRecord,
        kind: str,
        wallet: Pubkey,
        signers: list[txbuild.Signer],
        *,
        updates: dict[str, Any],
        allowed: EscrowState,
        reason: str | None = None,
    ) -> EscrowRecord:
        transitional = EscrowState.RELEASING if kind == "release" else EscrowState.REFUNDING
        intent = self.store.begin_move(
            record.job_id,
            allowed=[allowed],
            transitional=transitional,
            intent=self._settle_intent(record, kind, wallet, signers),
            updates=updates,
        )
        try:
            self._driver.drive(intent, rebuild=lambda: self._settle_intent(record, kind, wallet, signers))
        except LedgerError as exc:
            self._record_audit(
                kind,
                record.job_id,
                success=False,
                amount=record.amount,
                destination=str(wallet),
                reason=exc.code,
            )
            raise
        done = self.status(job_id=record.job_id)
        self._record_audit(
            kind,
            record.job_id,
            success=True,
            amount=record.amount,
            source=record.escrow_account,
            destination=str(wallet),
            tx_signature=done.settle_signature,
            reason=reason or done.resolution,
        )
        return done

    def _settle_intent(
        self, record: EscrowRecord, kind: str, wallet: Pubkey, signers: list[txbuild.Signer]
    ) -> NewIntent:
        instructions = txbuild.settle_escrow(
            payer=self._payer.pubkey(),
            escrow=Pubkey.from_string(record.escrow_account),
            mint=self.mint,
            decimals=self.decimals,
            multisig=self.multisig,
            recipient_wallet=wallet,
            amount=record.amount,
            authority_signers=[k.pubkey() for k in signers],
            memo_text=f"cyxwiz:escrow:{kind}:{record.job_id}",
        )
        target = EscrowState.RELEASED if kind == "release" else EscrowState.REFUNDED
        return self._signed(kind, instructions, signers, target, recipient=str(wallet))

    def _signed(
        self,
        kind: str,
        instructions: list[Any],
        signers: list[txbuild.Signer],
        target: EscrowState,
        recipient: str | None = None,
    ) -> NewIntent:
        blockhash, last_valid = self.chain.latest_blockhash()
        tx = txbuild.sign(instructions, payer=self._payer, signers=signers, blockhash=blockhash)
        return NewIntent(
            kind=kind,
            signature=str(tx.signatures[0]),
            tx=bytes(tx),
            last_valid_height=last_valid,
            target_state=target,
            recipient_wallet=recipient,
        )

    def _require_state(self, record: EscrowRecord, expected: EscrowState) -> None:
        if record.state != expected:
            self.store.update_fields(record.job_id, allowed=[expected])  # raises the precise state error
            raise EscrowError("escrow changed state concurrently", rule="F2")  # pragma: no cover

    def _authorities(self, *names: str) -> list[txbuild.Signer]:
        keys = {"coordinator": self._coordinator, "verifier": self._verifier, "arbiter": self._arbiter}
        missing = [name for name in names if keys[name] is None]
        if missing:
            raise MissingSignatureError(
                f"this move needs the {' and '.join(missing)} signature(s) of the 2-of-3 multisig",
                field=missing[0],
                rule="F1",
            )
        return [key for name in names if (key := keys[name]) is not None]

    def _refused(self, action: str, job_id: str, exc: CyxwizError, destination: str | None = None) -> None:
        """Refused attempts are payment-fraud signals: audit them too (H2, threat I)."""
        self._record_audit(
            action,
            str(job_id),
            success=False,
            amount=0,
            destination=destination,
            reason=f"refused: {exc.code}",
        )

    def _record_audit(self, action: str, job_id: str, *, success: bool, amount: int, **details: Any) -> None:
        if self._audit is None:
            return
        from cyxwiz.ledger.audit_bridge import record_payment

        record_payment(self._audit, action=action, job_id=job_id, success=success, amount=amount, **details)


__all__ = ["AuthorizationError", "EscrowLedger", "EscrowRecord"]
