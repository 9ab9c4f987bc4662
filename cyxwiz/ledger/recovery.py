"""After a crash: finish in-flight moves, retry approved releases, refund escrows nobody will settle (F2).

:func:`reconcile` looks every recorded signature up on chain: landed → finish; refused → put the escrow
back (a release to ``settling``); unknown with a live blockhash → re-send the *same* bytes (the chain
deduplicates by signature); unknown with an expired blockhash → it can never land, so a fresh transaction
for the same move is recorded and sent.

:func:`sweep` (the ``escrow-sweep`` flow) runs :func:`reconcile`, then sends again every release left
``settling`` (a chain refusal or timeout never becomes a refund), then refunds every ``locked`` escrow
whose deadline (job wall time + dispatch margin) has passed and whose lifecycle run is terminal or gone,
and at once every ``locked`` escrow whose lifecycle run is over (it died before its rollback could run).
Each escrow ends released or refunded exactly once: every step is a compare-and-set on its state and each
settle transaction closes the escrow account on chain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from solders.pubkey import Pubkey

from cyxwiz.errors import CyxwizError, LedgerError
from cyxwiz.ledger.intents import Rebuild
from cyxwiz.ledger.records import EscrowRecord
from cyxwiz.ledger.store import TRANSITIONAL, EscrowState, Intent, IntentStatus

if TYPE_CHECKING:
    from cyxwiz.ledger.ledger import CosignPlan, EscrowLedger
    from cyxwiz.ledger.stake import NodePeers

#: What the control plane knows of the lifecycle run that owns an escrow.
RunStatus = Literal["running", "terminal", "gone"]
RunState = Callable[[str | None], RunStatus]


@dataclass
class SweepReport:
    reconciled: list[EscrowRecord] = field(default_factory=list)
    released: list[EscrowRecord] = field(default_factory=list)
    refunded: list[EscrowRecord] = field(default_factory=list)
    #: jobs whose owed slash (fraud report or upheld dispute) the sweep sent
    slashed: list[str] = field(default_factory=list)
    #: job id -> why it is still not settled (audited as an alert)
    alerts: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, str]]:
        rows = [{"job_id": r.job_id, "state": r.state.value, "step": "reconciled"} for r in self.reconciled]
        rows += [
            {"job_id": r.job_id, "state": r.state.value, "step": "release retried"} for r in self.released
        ]
        rows += [
            {"job_id": r.job_id, "state": r.state.value, "step": "expired, refunded"} for r in self.refunded
        ]
        rows += [{"job_id": j, "state": "refunded", "step": "owed slash sent"} for j in self.slashed]
        rows += [{"job_id": j, "state": "alert", "step": why} for j, why in self.alerts.items()]
        return rows


def reconcile(ledger: EscrowLedger) -> list[EscrowRecord]:
    import cyxwiz.ledger.stake  # noqa: F401 - registers how a slash intent concludes (store.SIDE_MOVES)

    touched: list[str] = []
    for intent in ledger.store.intents(status=IntentStatus.PREPARED):
        touched.append(intent.job_id)
        try:
            concluded = _recover(ledger, intent)
        except CyxwizError as exc:
            ledger._record_audit(
                intent.kind, intent.job_id, success=False, amount=0, reason=f"reconcile: {exc.code}"
            )
            continue  # left for the next sweep (or settled as failed); the record says why
        if not concluded:
            continue  # the process that sent it concluded it meanwhile, and audited it (one record)
        record = ledger.status(job_id=intent.job_id)
        ledger._record_audit(
            intent.kind,
            intent.job_id,
            success=record.state in (EscrowState.LOCKED, EscrowState.RELEASED, EscrowState.REFUNDED,
                                     EscrowState.DISPUTED),
            amount=record.amount,
            destination=intent.recipient_wallet,
            tx_signature=record.settle_signature or record.create_signature,
            reason=f"reconciled after a crash: {record.state.value}",
        )  # fmt: skip
    return [ledger.status(job_id=job_id) for job_id in dict.fromkeys(touched)]


def _recover(ledger: EscrowLedger, intent: Intent) -> bool:
    """Finish one prepared intent; False when another process concluded it meanwhile."""
    driver = ledger._driver
    status = ledger.chain.signature_status(intent.signature)
    if status is not None:
        return driver.conclude(intent, status).concluded
    rebuild = _rebuilder(ledger, intent)
    if ledger.chain.block_height() <= intent.last_valid_height:
        return driver.drive(intent, rebuild=rebuild).concluded  # re-sends the same signed bytes
    if rebuild is None:
        ledger.store.abandon(
            intent, status=IntentStatus.EXPIRED, error="expired unsent", revert_to=driver.revert(intent)
        )
        return True
    return driver.drive(ledger.store.replace(intent, rebuild()), rebuild=rebuild).concluded


def _rebuilder(ledger: EscrowLedger, intent: Intent) -> Rebuild | None:
    if intent.kind not in TRANSITIONAL or intent.kind == "create" or intent.recipient_wallet is None:
        # the user's signature cannot be re-made here; a side move (slash) is abandoned once it can never
        # land, and made afresh by the sweep (stake.slash_owed)
        return None
    record = ledger.status(job_id=intent.job_id)
    if intent.kind == "dispute":
        signers = ledger._keys("coordinator")
        dispute_plan: CosignPlan = (ledger._cosigner(), "dispute", None)
        from cyxwiz.ledger.disputes import dispute_intent

        return lambda: dispute_intent(ledger, record, signers, dispute_plan)
    disputed = intent.prior_state == EscrowState.DISPUTED
    signers = ledger._keys("arbiter" if disputed else "coordinator")
    kind = "resolve" if disputed else intent.kind
    report = record.report if intent.kind == "release" and not disputed else None
    plan: CosignPlan = (ledger._cosigner(), kind, report)
    wallet = Pubkey.from_string(intent.recipient_wallet)
    return lambda: ledger.settle_intent(record, intent.kind, wallet, signers, plan)


#: A run still "running" this long after its escrow's deadline is taken for dead (a killed worker leaves
#: its Prefect state RUNNING): refunding is safe, a late release would lose the compare-and-set.
STALE_AFTER = dt.timedelta(hours=1)


def sweep(
    ledger: EscrowLedger,
    *,
    run_state: RunState,
    now: dt.datetime | None = None,
    stale_after: dt.timedelta = STALE_AFTER,
    node_peers: NodePeers | None = None,
) -> SweepReport:
    report = SweepReport(reconciled=reconcile(ledger))
    moment = now or dt.datetime.now(dt.UTC)
    for record in ledger.list_escrows(states=[EscrowState.SETTLING]):
        try:
            report.released.append(ledger.retry_release(job_id=record.job_id))
        except CyxwizError as exc:
            _alert(ledger, report, record, f"release still pending: {exc.code}")
    for record in ledger.list_escrows(states=[EscrowState.LOCKED]):
        reason = _why_settle(record, run_state, moment=moment, stale_after=stale_after)
        if reason is None:
            continue  # the lifecycle still owns it: its own rollback or settlement will move it
        try:
            passed = ledger.passing_report(job_id=record.job_id)
            if passed is not None:
                # The verification passed and the lifecycle died before releasing: the node is owed (F1).
                report.released.append(_release_owed(ledger, record, passed))
                continue
            report.refunded.append(ledger.refund(job_id=record.job_id, reason=reason))
        except CyxwizError as exc:
            _alert(ledger, report, record, f"expired settlement failed: {exc.code}")
    from cyxwiz.ledger.stake import slash_owed

    report.slashed, owed = slash_owed(ledger, node_peers=node_peers)
    for job_id, why in owed.items():
        _alert(ledger, report, ledger.status(job_id=job_id), why)
    for record in ledger.list_escrows(states=[EscrowState.RELEASING, EscrowState.REFUNDING,
                                              EscrowState.CREATING, EscrowState.DISPUTING]):  # fmt: skip
        if record.job_id not in {r.job_id for r in report.reconciled}:
            _alert(ledger, report, record, f"{record.state.value} with no intent in flight")
    return report


def _release_owed(ledger: EscrowLedger, record: EscrowRecord, passed: str) -> EscrowRecord:
    if record.node_wallet is None:
        # The assignment is written without waiting for the disk and a crash lost it: the node the
        # verifier's signed report names is the one it verified (its signature is checked on release).
        from cyxwiz.ledger.attestation import ReportAttestation

        bound = ReportAttestation.parse(passed)
        record = ledger.assign(
            job_id=record.job_id, node_wallet=bound.node_wallet, node_peer_id=bound.node_peer_id
        )
    assert record.node_wallet is not None
    return ledger.release(job_id=record.job_id, node_wallet=record.node_wallet, report=passed)


def _why_settle(
    record: EscrowRecord, run_state: RunState, *, moment: dt.datetime, stale_after: dt.timedelta
) -> str | None:
    """Why the sweep may settle this locked escrow now, or None while its lifecycle may still do it."""
    expired = record.deadline is not None and record.deadline <= moment
    if not expired and record.run_id is None:
        return None
    run: str = run_state(record.run_id)
    if run == "terminal":
        # Its run is over and left the escrow locked (killed before its rollback): nobody else will
        # move it, so waiting for the deadline only keeps the user's funds from them.
        return "lifecycle run ended without settling"
    if not expired:
        return None
    if run == "running" and record.deadline is not None and moment < record.deadline + stale_after:
        return None
    if run == "running":
        run = f"still marked running {stale_after} past the deadline"
    return f"expired: deadline passed, lifecycle run {run}"


def _alert(ledger: EscrowLedger, report: SweepReport, record: EscrowRecord, why: str) -> None:
    report.alerts[record.job_id] = why
    ledger._record_audit("alert.sweep", record.job_id, success=False, amount=record.amount, reason=why[:500])


__all__ = ["LedgerError", "RunState", "RunStatus", "SweepReport", "reconcile", "sweep"]
