"""Driving one recorded intent to its end: send, confirm, re-prepare on expiry, or put the escrow back (F2).

The rules that make a crash harmless live here: the same signed bytes may be sent any number of times
(the chain de-duplicates by signature); a transaction is only given up on once the chain refused it or its
blockhash expired without it landing (then it can never land); an unconfirmed one is left recorded for
the reconciler rather than guessed about.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cyxwiz.errors import EscrowError, LedgerError
from cyxwiz.ledger.chain import Chain, SignatureStatus, TransactionRejectedError
from cyxwiz.ledger.rounds import BatchStatus
from cyxwiz.ledger.store import EscrowState, EscrowStore, Finished, Intent, IntentStatus, NewIntent

Rebuild = Callable[[], NewIntent]


def _no_fault(_point: str) -> None:
    return None


@dataclass
class IntentDriver:
    chain: Chain
    store: EscrowStore
    confirm_timeout_s: float = 30.0
    max_attempts: int = 3
    #: test hook: called with "after_record" / "after_send" (crash tests kill the process there)
    fault: Callable[[str], None] = field(default=_no_fault)
    batch: BatchStatus | None = None

    def __post_init__(self) -> None:
        if self.batch is None:
            self.batch = BatchStatus(self.chain)

    def drive(self, intent: Intent, *, rebuild: Rebuild | None) -> Finished:
        """Send a recorded intent until it is confirmed, refused, or (expired and not rebuildable).

        ``concluded`` when this call concluded the confirmed intent, not when another process (the sweep,
        a second lifecycle) concluded it first: that one audits the move.
        """
        for _attempt in range(self.max_attempts):
            self.fault("after_record")
            try:
                self.chain.send_raw(intent.tx)
            except TransactionRejectedError as exc:
                if not (exc.already_processed or exc.blockhash_expired):
                    self.store.abandon(
                        intent, status=IntentStatus.FAILED, error=exc.reason, revert_to=self.revert(intent)
                    )
                    raise EscrowError(
                        f"the chain refused the {intent.kind} transaction: {exc.reason}",
                        field="job_id",
                        rule="F2",
                    ) from None
            self.fault("after_send")
            status = self.wait(intent)
            if status is not None:
                return self.conclude(intent, status)
            if rebuild is None:
                break
            intent = self.store.replace(intent, rebuild())
        self.store.abandon(
            intent,
            status=IntentStatus.EXPIRED,
            error="blockhash expired unsent",
            revert_to=self.revert(intent),
        )
        raise EscrowError(
            f"the {intent.kind} transaction expired before it landed", field="job_id", rule="F2"
        )

    def wait(self, intent: Intent) -> SignatureStatus | None:
        """The signature's status once known; None once its blockhash expired unseen. Raises on timeout."""
        deadline = time.monotonic() + self.confirm_timeout_s
        delay = 0.01
        assert self.batch is not None
        while True:
            status = self.batch.status(intent.signature)
            if status is not None:
                return status
            if self.chain.block_height() > intent.last_valid_height:
                # One more look: it may have landed just before the blockhash expired.
                return self.chain.signature_status(intent.signature)
            if time.monotonic() > deadline:
                raise LedgerError(
                    f"{intent.kind} not confirmed yet (signature {intent.signature}); "
                    "the reconciler will finish it",
                    rule="F2",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def conclude(self, intent: Intent, status: SignatureStatus) -> Finished:
        """Record what the chain decided (raises when it failed); whether this call concluded it."""
        if status.err is None:
            return self.store.finish(intent)
        self.store.abandon(
            intent, status=IntentStatus.FAILED, error=status.err, revert_to=self.revert(intent)
        )
        raise EscrowError(f"the {intent.kind} transaction failed on chain: {status.err}", rule="F2")

    @staticmethod
    def revert(intent: Intent) -> EscrowState:
        """Where a move that can never land leaves the escrow.

        A release was approved by a passing report: it is never turned back into a lockable (hence
        refundable) escrow, it waits ``settling`` for the sweep to send it again (F1).
        """
        if intent.kind == "create":
            return EscrowState.VOID
        if intent.kind == "release" and intent.prior_state in (EscrowState.LOCKED, EscrowState.SETTLING):
            return EscrowState.SETTLING
        return intent.prior_state
