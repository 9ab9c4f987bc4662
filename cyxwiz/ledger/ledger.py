"""EscrowLedger: per-job escrow on Solana with a crash-safe intent log (SPEC F1–F3).

Every on-chain move follows one protocol, so a process killed at any point never pays twice:

1. build the transaction message and collect its signatures: the keys this process holds, and the
   verifier's co-signature (its own process, its own rules: :mod:`cyxwiz.ledger.cosign`);
2. commit the escrow's compare-and-set into a transitional state together with the signed bytes
   (the intent) — a concurrent second release loses here, before anything is sent;
3. send; confirm by polling the signature's status;
4. commit the final state.

Authority is split (F1, threat I): the escrow multisig is 2-of-3 (coordinator, verifier, arbiter). A
release needs the verifier's co-signature, which it gives only for a passing report it signed itself
(:mod:`cyxwiz.ledger.attestation`); the ledger checks the same report before asking. A dispute moves the
funds into a dispute escrow owned by a 2-of-2 (arbiter, verifier) multisig, so only a set of keys that
includes the arbiter can settle it. Recovery after a crash lives in :mod:`cyxwiz.ledger.recovery`.

Public API for other packages (tenants, verification): :meth:`funding_message` + :meth:`create_signed`
(a lock the user's own client signs), :meth:`create` (a user key held here), :meth:`assign` (the node,
PeerID and payout wallet a release may pay), :meth:`release` (with the verifier's attestation),
:meth:`refund`, :meth:`dispute`, :meth:`resolve` (arbiter), :meth:`reconcile` and :meth:`sweep`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.errors import AuthorizationError, ConfigError, CyxwizError, EscrowError
from cyxwiz.keys.solana import SourceSigner
from cyxwiz.ledger import moves, txbuild
from cyxwiz.ledger.attestation import AttestationPolicy
from cyxwiz.ledger.chain import Chain
from cyxwiz.ledger.cosign import Cosigner, KeyCosigner, VerifierPolicy
from cyxwiz.ledger.intents import IntentDriver
from cyxwiz.ledger.records import (
    EscrowRecord,
    MissingSignatureError,
    check_job_id,
    check_reason,
    check_wallet,
)
from cyxwiz.ledger.rounds import BatchStatus, SharedBlockhash
from cyxwiz.ledger.store import EscrowState, EscrowStore, NewIntent
from cyxwiz.ledger.verdicts import refuse_if_passed, verdict_of

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink
    from cyxwiz.ledger.recovery import RunState, SweepReport
    from cyxwiz.ledger.stake import NodePeers, StakePolicy

#: (cosigner, kind the cosigner is asked for, report JSON)
CosignPlan = tuple[Cosigner, str, str | None]
Signers = list[txbuild.Signer]


class EscrowLedger:
    """Escrow operations over any :class:`~cyxwiz.ledger.chain.Chain` (LiteSVM in-process or JSON-RPC).

    ``payer`` pays fees (and, as ``rent_owner`` by default, the escrow accounts' rent). Authority keys are
    those this process holds — at most one in production (:func:`cyxwiz.ledger.config.open_ledger`);
    ``verifier`` is a :class:`~cyxwiz.ledger.cosign.Cosigner` (the verifier service), or a keypair wrapped
    in the same rules in-process. ``attestations`` are the trust anchors verifier reports are checked
    against. ``fault`` is a test hook called with ``"after_record"`` / ``"after_send"``.
    """

    def __init__(
        self,
        *,
        chain: Chain,
        store: EscrowStore,
        mint: Pubkey,
        decimals: int,
        multisig: Pubkey,
        payer: txbuild.Signer,
        coordinator: txbuild.Signer | None = None,
        verifier: txbuild.Signer | Cosigner | None = None,
        arbiter: txbuild.Signer | None = None,
        attestations: AttestationPolicy | None = None,
        dispute_multisig: Pubkey | None = None,
        rent_owner: Pubkey | None = None,
        minimum_payment: int = 1,
        audit: AuditSink | None = None,
        stake_policy: StakePolicy | None = None,
        node_peers: NodePeers | None = None,
        confirm_timeout_s: float = 30.0,
        max_attempts: int = 3,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self.chain = chain
        self.store = store
        self.mint = mint
        self.decimals = decimals
        self.multisig = multisig
        self.dispute_multisig = dispute_multisig
        self._payer = payer
        #: public keys of the keys held for this ledger's life: ``Keypair.pubkey()`` derives the key anew on
        #: every call (~25 µs), a dozen times per escrow pair
        self._pubkeys: dict[int, Pubkey] = {}
        self._held: list[object] = []
        self.payer_key = self.key_of(payer)
        self.rent_owner = rent_owner or self.payer_key
        self._coordinator = coordinator
        self._arbiter = arbiter
        self.attestations = attestations
        self.stake_policy = stake_policy
        #: the coordinator's links between a node's PeerIDs (its stake is the node's, A7), for the in-process
        #: verifier's slash rule; the verifier service is given its own
        self.node_peers = node_peers
        self.minimum_payment = minimum_payment
        self._rent: int | None = None
        #: blockhash -> last valid block height, for funding messages made here (saves an RPC round trip)
        self._valid_until: dict[str, int] = {}
        #: funding messages built here -> their (job, wallet, amount, owner), the message as built and the
        #: user's token account, until funded (used once)
        self._issued: dict[bytes, tuple[tuple[str, str, int, str | None], Message, Pubkey]] = {}
        self._audit = audit
        if isinstance(verifier, Keypair | SourceSigner):
            verifier = KeyCosigner(verifier, self.verifier_policy())
        self._verifier: Cosigner | None = verifier
        #: concurrent escrows' blockhash look-ups share one call per round (:mod:`cyxwiz.ledger.rounds`)
        blockhash_file, statuses_file = store.rounds_files or (None, None)
        self.latest_blockhash = SharedBlockhash(chain, host_file=blockhash_file)
        self._driver = IntentDriver(
            chain=chain,
            store=store,
            batch=BatchStatus(chain, host_file=statuses_file),
            confirm_timeout_s=confirm_timeout_s,
            max_attempts=max_attempts,
            fault=fault or (lambda _point: None),
        )

    def key_of(self, signer: txbuild.Signer | Cosigner) -> Pubkey:
        """The public key of a signer this ledger holds (payer, authority keys, co-signer), cached."""
        key = self._pubkeys.get(id(signer))
        if key is None:
            key = self._pubkeys[id(signer)] = signer.pubkey()
            self._held.append(signer)  # kept alive with the ledger: its id() is never reused meanwhile
        return key

    def verifier_policy(self) -> VerifierPolicy:
        """The verifier's rules over this ledger's store (what the verifier service runs too)."""
        from cyxwiz.ledger.stake import StakeBook, StakePolicy
        from cyxwiz.ledger.verdicts import VerdictBook

        return VerifierPolicy(
            attestations=self._trust(),
            lookup=lambda job_id: self.status(job_id=job_id),
            mint=self.mint,
            rent_owner=self.rent_owner,
            dispute_multisig=self.dispute_multisig,
            stakes=StakeBook(self.store._engine),
            stake_policy=self.stake_policy or StakePolicy(),
            escrow_store=self.store,
            verdicts=VerdictBook(engine=self.store._engine, fast=self.store._fast, flush=self.store.flush),
            node_peers=self.node_peers,
            chain=self.chain,
        )

    def close(self) -> None:
        """Release the RPC client and database connections."""
        self.latest_blockhash.close()
        if self._driver.batch is not None:
            self._driver.batch.close()
        self.chain.close()
        self.store.dispose()

    # -- queries ----------------------------------------------------------------------------------

    def status(self, *, job_id: str) -> EscrowRecord:
        return EscrowRecord.from_row(self.store.get(check_job_id(job_id)))

    def list_escrows(self, *, states: Iterable[EscrowState] | None = None) -> list[EscrowRecord]:
        return [EscrowRecord.from_row(r) for r in self.store.list_escrows(states=states)]

    def onchain_amount(self, *, job_id: str) -> int:
        """Base units the job's escrow (or its dispute escrow) holds on chain right now (0 once settled)."""
        record = self.status(job_id=job_id)
        account = record.dispute_account or record.escrow_account
        return self.chain.token_amount(Pubkey.from_string(account)) or 0

    def settlement_memo(self, *, job_id: str) -> str | None:
        """The memo of the transaction that settled the escrow, as signed (report hash, audit leaf)."""
        return moves.settlement_memo(self, job_id)

    # -- funding ----------------------------------------------------------------------------------

    def funding_message(self, *, job_id: str, user_wallet: str | Pubkey, amount: int) -> bytes:
        """The lock transaction's message for the user's own client to sign (the fee payer signs later)."""
        from cyxwiz.ledger.funding import funding_message

        return funding_message(self, job_id=job_id, user_wallet=user_wallet, amount=amount)

    def create(
        self,
        *,
        job_id: str,
        user: Keypair,
        amount: int,
        deadline: dt.datetime | None = None,
        run_id: str | None = None,
    ) -> EscrowRecord:
        """Lock ``amount`` base units from a user key held in this process (F1, F3)."""
        from cyxwiz.ledger.funding import create_signed

        wallet = user.pubkey()
        message = self.funding_message(job_id=job_id, user_wallet=wallet, amount=amount)
        # the signature is made here, by the wallet's own key: good by construction (not verified again)
        return create_signed(
            self, job_id=job_id, user_wallet=wallet, amount=amount, message=message,
            user_signature=user.sign_message(message), deadline=deadline, run_id=run_id, signed_here=True,
        )  # fmt: skip

    def create_signed(
        self,
        *,
        job_id: str,
        user_wallet: str | Pubkey,
        amount: int,
        message: bytes,
        user_signature: Signature | str,
        deadline: dt.datetime | None = None,
        run_id: str | None = None,
        owner: str | None = None,
    ) -> EscrowRecord:
        """Lock funds with a message from :meth:`funding_message` the user's client signed (F1, F3).

        The message must be exactly the lock of ``amount`` from that wallet for that job (re-built and
        compared), and the signature the wallet's over it; then the fee payer signs and the usual intent
        protocol runs (:func:`cyxwiz.ledger.funding.create_signed`). ``owner``: the submitting user's id
        when the client put it in the memo (:mod:`cyxwiz.ledger.client_funding`), so one user's signed lock
        cannot fund another user's job (C2).
        """
        from cyxwiz.ledger.funding import create_signed

        return create_signed(
            self, job_id=job_id, user_wallet=user_wallet, amount=amount, message=message,
            user_signature=user_signature, deadline=deadline, run_id=run_id, owner=owner,
        )  # fmt: skip

    def assign(
        self,
        *,
        job_id: str,
        node_wallet: str | Pubkey,
        node_peer_id: str | None = None,
        deadline: dt.datetime | None = None,
        run_id: str | None = None,
    ) -> EscrowRecord:
        """Record the node the job was dispatched to (PeerID and payout wallet): the only one a release
        pays (F1). ``deadline`` (wall time + dispatch margin) is when the sweep may refund a dead job."""
        wallet = check_wallet(node_wallet, field="node_wallet")
        fields: dict[str, Any] = {"node_wallet": str(wallet)}
        if node_peer_id is not None:
            fields["node_peer_id"] = check_reason(node_peer_id, field="node_peer_id")
        if deadline is not None:
            fields["deadline"] = deadline
        if run_id is not None:
            fields["run_id"] = run_id
        return EscrowRecord.from_row(
            self.store.update_fields(
                check_job_id(job_id), allowed=[EscrowState.LOCKED], durable=False, **fields
            )
        )

    # -- settlement -------------------------------------------------------------------------------

    def release(
        self, *, job_id: str, node_wallet: str | Pubkey, report: object = None, proof_ref: str | None = None
    ) -> EscrowRecord:
        """Pay the assigned node; needs the verifier's attestation of a passing report for this job, node
        and escrow (``report``). The report's SHA-256 goes into the memo. Coordinator + verifier sign."""
        try:
            record, wallet, attestation = moves.release_checks(self, job_id, node_wallet, report, proof_ref)
            signers = self._keys("coordinator")
        except CyxwizError as exc:
            self._refused("release", job_id, exc, destination=str(node_wallet))
            raise
        updates = {
            "proof_ref": proof_ref or f"sha256:{attestation.report_sha256}",
            "report": attestation.to_json(),
            "report_sha256": attestation.report_sha256,
        }
        cosign: CosignPlan = (self._cosigner(), "release", attestation.to_json())
        return moves.settle(
            self, record, "release", wallet, signers, cosign, updates=updates,
            allowed=(EscrowState.LOCKED, EscrowState.SETTLING),
        )  # fmt: skip

    def retry_release(self, *, job_id: str) -> EscrowRecord:
        """Send again the release of an escrow left ``settling`` (the sweep calls this)."""
        record = self.status(job_id=job_id)
        self._require_state(record, EscrowState.SETTLING)
        assert record.node_wallet is not None  # a settling escrow went through the release checks
        return self.release(job_id=job_id, node_wallet=record.node_wallet, report=record.report)

    def refund(self, *, job_id: str, reason: str = "job failed", report: object = None) -> EscrowRecord:
        """Return the funds to the user (job failed, cancelled or expired); coordinator + verifier sign.

        ``report``: the verifier's failing attestation, when a verification decided it; its report hash
        and audit leaf then go into the memo too, and it is kept with the escrow (a ``fraud`` one is what
        the sweep slashes the node's stake for). A job whose verification passed is never refunded: the
        verifier refuses to co-sign (its own book), and this ledger refuses first when it knows.
        """
        try:
            record = self.status(job_id=job_id)
            self._require_state(record, EscrowState.LOCKED)
            refuse_if_passed(record, "refund")
            signers = self._keys("coordinator")
            updates: dict[str, Any] = {}
            cited = None
            if report is not None:
                attestation = self._trust().check(
                    report, job_id=record.job_id, node_peer_id=record.node_peer_id,
                    node_wallet=record.node_wallet, escrow=record.escrow_account, verdicts=("fail", "fraud"),
                )  # fmt: skip
                cited = attestation.to_json()
                updates = {"report": cited, "report_sha256": attestation.report_sha256}
            cosign: CosignPlan = (self._cosigner(), "refund", cited)
        except CyxwizError as exc:
            self._refused("refund", job_id, exc)
            raise
        user = Pubkey.from_string(record.user_wallet)
        return moves.settle(
            self, record, "refund", user, signers, cosign, updates=updates, allowed=(EscrowState.LOCKED,),
            reason=reason,
        )  # fmt: skip

    def passing_report(self, *, job_id: str) -> str | None:
        """The passing attestation known for the job (kept with the escrow, else the verifier's book)."""
        record = self.status(job_id=job_id)
        if record.report and verdict_of(record.report) == "pass":
            return record.report
        ask = getattr(self._verifier, "passing", None)
        return None if ask is None else ask(record.job_id)

    def dispute(self, *, job_id: str, reason: str) -> EscrowRecord:
        """Move the funds into the job's dispute escrow: from then on only the arbiter's resolve (with the
        verifier) can move them, on chain (F1). Coordinator + verifier sign the move."""
        from cyxwiz.ledger.disputes import dispute

        return dispute(self, job_id=job_id, reason=reason)

    def resolve(
        self,
        *,
        job_id: str,
        outcome: Literal["release", "refund"],
        node_wallet: str | Pubkey | None = None,
        proof_ref: str | None = None,
    ) -> EscrowRecord:
        """Arbiter's decision on a disputed escrow; arbiter + verifier sign (the dispute multisig, F1)."""
        from cyxwiz.ledger.disputes import resolve

        return resolve(self, job_id=job_id, outcome=outcome, node_wallet=node_wallet, proof_ref=proof_ref)

    # -- recovery (see cyxwiz.ledger.recovery) ----------------------------------------------------

    def reconcile(self) -> list[EscrowRecord]:
        """Finish every move a crash left in flight; returns the escrows touched (F2)."""
        from cyxwiz.ledger.recovery import reconcile

        return reconcile(self)

    def sweep(
        self, *, run_state: RunState, now: dt.datetime | None = None, node_peers: NodePeers | None = None
    ) -> SweepReport:
        """Reconcile, retry settling releases, refund expired escrows whose lifecycle is over (F2); owed
        slashes take the node's stake under any PeerID ``node_peers`` links to the one that signed."""
        from cyxwiz.ledger.recovery import sweep

        return sweep(self, run_state=run_state, now=now, node_peers=node_peers)  # see recovery.STALE_AFTER

    # -- internals --------------------------------------------------------------------------------

    def settle_intent(
        self,
        record: EscrowRecord,
        kind: str,
        wallet: Pubkey,
        signers: list[txbuild.Signer],
        cosign: CosignPlan,
    ) -> NewIntent:
        """A signed settle transaction (release/refund) from the escrow, or from the dispute escrow."""
        return moves.settle_intent(self, record, kind, wallet, signers, cosign)

    def _account_rent(self) -> int:
        if self._rent is None:  # rent-exemption of a token account is a constant of the cluster
            self._rent = self.chain.minimum_rent(txbuild.RENT_SIZES["account"])
        return self._rent

    def _last_valid(self, message: Message) -> int:
        known = self._valid_until.get(str(message.recent_blockhash))
        if known is not None:  # concurrent messages may share one blockhash: kept, not used up
            return known
        blockhash, last_valid = self.latest_blockhash()
        # A message signed with an older blockhash is valid no longer than one made now would be.
        return last_valid if blockhash == message.recent_blockhash else self.chain.block_height() + 150

    def _trust(self) -> AttestationPolicy:
        if self.attestations is None:
            raise ConfigError(
                "no trust anchors for verifier reports: releases are impossible",
                field="attestations",
                rule="F1",
                hint="set trust_bundle (and crl) in the ledger config",
            )
        return self.attestations

    def _require_state(self, record: EscrowRecord, *expected: EscrowState) -> None:
        if record.state not in expected:
            self.store.update_fields(record.job_id, allowed=list(expected))  # raises the precise state error
            raise EscrowError("escrow changed state concurrently", rule="F2")  # pragma: no cover

    def _keys(self, *names: str) -> list[txbuild.Signer]:
        keys = {"coordinator": self._coordinator, "arbiter": self._arbiter}
        missing = [name for name in names if keys[name] is None]
        if missing:
            raise MissingSignatureError(
                f"this move needs the {' and '.join(missing)} signature(s) of the escrow multisig",
                field=missing[0],
                rule="F1",
            )
        return [key for name in names if (key := keys[name]) is not None]

    def _cosigner(self) -> Cosigner:
        if self._verifier is None:
            raise MissingSignatureError(
                "this move needs the verifier's co-signature of the escrow multisig",
                field="verifier",
                rule="F1",
            )
        return self._verifier

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
