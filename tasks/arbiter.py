"""The arbiter's side of a filed dispute (issue 20, ``verification.dispute_window_s``; SPEC F1, H2).

A dispute filed inside the window moved the escrow into the dispute escrow, which only a key set
including the arbiter can move (:mod:`tasks.holds`). Here the arbiter decides it with the verifier's own
replay (:func:`cyxwiz.verification.dispute.resolve_dispute`) and settles through the ledger with the
arbiter's key: upheld → refund to the user and slash the node's stake (a committed segment that does not
reproduce is fraud), rejected → release to the node.

The replay needs the per-job bound training document (with its secret, drawn after assignment) and the
training split; neither is in a job-scoped place, so :func:`seal_case` stores them encrypted at hold time
under ``holdout/{job}/`` — the trusted prefix no job-scoped URL reaches. The node's outputs are read back
from the archive only after their signed proof verifies and every artifact re-hashes (D3).

``segment`` evidence is the only kind: the coordinator refuses a test set at filing (one picked after
delivery can always be rows the model gets wrong); a case of another kind is refused here too.
Plain functions over the core (no Prefect); :mod:`flows.arbiter` wraps them.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cyxwiz.errors import ConflictError, CyxwizError, NotFoundError, ValidationError
from cyxwiz.ledger.store import EscrowState
from cyxwiz.verification.dispute import Evidence, Resolution
from tasks import holds, services

if TYPE_CHECKING:
    from tasks.referee import NodeEvidence

#: The one evidence kind there is (see the module doc).
DECIDABLE = ("segment",)


def case_key(job_id: str) -> str:
    """The sealed dispute case: bound training document and training split key (never under ``jobs/``)."""
    return f"holdout/{job_id}/arbiter-case.json"


def seal_case(job_id: str, dispatched: dict[str, Any]) -> bool:
    """Keep what the arbiter's replay needs, encrypted on the trusted side; False when the dispatch
    carries no bound document (a script job, or a caller that holds no training input)."""
    doc, dataset_key = dispatched.get("training_doc"), dispatched.get("dataset_key")
    if not isinstance(doc, dict) or not isinstance(dataset_key, str):
        return False
    body = json.dumps({"training_doc": doc, "dataset_key": dataset_key}, sort_keys=True).encode()
    services.store().put_bytes(case_key(job_id), body, encrypt=True)
    return True


def arbiter_ledger() -> Any:
    """The ledger with the arbiter's key (``CYXWIZ_ARBITER_PASSPHRASE``); the verifier co-signs."""
    from cyxwiz.ledger.config import LedgerConfig, open_ledger

    config = LedgerConfig.from_file(services.config().ledger_config)
    # From the control plane's settings (its block's secrets, else the environment); never exported.
    secret = services.current().setting("CYXWIZ_ARBITER_PASSPHRASE")
    return open_ledger(
        config,
        roles=("arbiter",),
        passphrase=secret.encode() if secret else None,
        audit=services.audit(),
    )


@dataclass(frozen=True, kw_only=True)
class Case:
    job_id: str
    user_id: str
    node_wallet: str
    node_peer_id: str
    evidence: dict[str, Any]

    def describe(self) -> str:
        return f"segment starting at step {self.evidence.get('segment_start')}"


def _audit(action: str, job_id: str, *, success: bool, reason: str, destination: str | None = None) -> None:
    from cyxwiz.ledger.audit_bridge import record_payment

    record_payment(
        services.audit(), action=action, job_id=job_id, success=success, amount=0,
        destination=destination, reason=reason[:500],
    )  # fmt: skip


def load_case(job_id: str) -> Case:
    """The filed dispute, once its funds sit in the dispute escrow; refused (and audited) otherwise."""
    try:
        hold = holds.book().get(job_id)
        if hold.evidence is None or hold.state not in ("disputed", "settled"):
            raise ConflictError("no dispute was filed for this job", field="job_id", rule="F1")
        if hold.state == "disputed":
            holds.finish_hold(job_id)  # the lifecycle died before moving the funds: move them first
        record = arbiter_ledger().status(job_id=job_id)
        if record.state is not EscrowState.DISPUTED:
            if record.dispute_account and record.resolution in ("release", "refund"):
                # Decided already; a run that died after the ledger move leaves the job's status behind.
                status = "released" if record.resolution == "release" else "refunded"
                services.control_channel().set_status(job_id, status)
                raise ConflictError(
                    f"the dispute was already resolved ({record.resolution})", field="job_id", rule="F2"
                )
            raise ConflictError(
                f"the escrow is {record.state.value}, not in the dispute escrow", field="job_id", rule="F1"
            )
        kind = hold.evidence.get("kind")
        if kind not in DECIDABLE:
            raise ValidationError(
                f"{kind!r} evidence cannot be decided by the arbiter's flow, only a committed segment "
                "(the coordinator no longer files any other kind); resolve it by hand "
                "(cyxwiz escrow resolve-dispute)",
                field="evidence.kind",
                rule="F1",
            )
    except CyxwizError as exc:
        _audit("arbiter.refused", job_id, success=False, reason=f"{exc.code}: {exc.message}")
        raise
    return Case(
        job_id=job_id,
        user_id=hold.user_id,
        node_wallet=hold.node_wallet,
        node_peer_id=str(record.node_peer_id or ""),
        evidence=dict(hold.evidence),
    )


def node_outputs(job_id: str, peer: str, into: Path) -> tuple[NodeEvidence | None, str | None]:
    """The node's outputs from the archive, its signed proof verified and each artifact re-hashed, with the
    PeerID its run was trained for (the signer's, or one that renewed into it by signed links): the replay
    rebuilds that run."""
    from tasks.referee import _evidence

    return _evidence(job_id, peer, into)


def decide(case: Case) -> Resolution:
    """Replay the segment the evidence names from the node's committed checkpoints (bit for bit)."""
    from cyxwiz.training.data import load_dataset
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.commitments import read_commitments
    from cyxwiz.verification.dispute import resolve_dispute

    store = services.store()
    try:
        sealed = json.loads(store.get_bytes(case_key(case.job_id)))
    except NotFoundError as exc:
        raise ConflictError(
            "no sealed training document was kept for this job: the replay cannot run",
            field="job_id",
            rule="F1",
        ) from exc
    job = parse_training_job(sealed["training_doc"], allow_file_uris=True)
    if job.job_id != case.job_id:
        raise ConflictError("the sealed training document names another job", field="job_id", rule="F1")
    if job.model is None:
        raise ValidationError("segment evidence needs a model job", field="evidence.kind", rule="F1")
    with tempfile.TemporaryDirectory(prefix="cyxwiz-arbiter-") as tmp:
        evidence_of_node, why = node_outputs(case.job_id, case.node_peer_id, Path(tmp) / "out")
        if evidence_of_node is None:
            # The verifier accepted these outputs; unusable now means the archive changed, not the node.
            raise ConflictError(f"the node's evidence is unusable: {why}", field="job_id", rule="D3")
        train = Path(tmp) / "train.npz"
        store.get_file(sealed["dataset_key"], train)
        data = load_dataset(
            train, sha256=job.dataset.sha256, input_shape=job.model.input_shape,
            input_dtype=job.model.input_dtype, num_classes=job.task.num_classes,
        )  # fmt: skip
        evidence = Evidence(kind="segment", segment_start=int(case.evidence["segment_start"]))
        out = evidence_of_node.output_dir
        return resolve_dispute(
            evidence,
            job=job,
            data=data,
            output_dir=out,
            commitments=read_commitments(out / "commitments.json"),
            trainer=evidence_of_node.trainer,
        )


def settle(case: Case, resolution: Resolution) -> dict[str, Any]:
    """Carry the decision out with the arbiter's key; an upheld dispute also slashes the node's stake."""
    from cyxwiz.verification.dispute import settle_dispute

    ledger = arbiter_ledger()
    action = "arbiter.upheld" if resolution.upheld else "arbiter.rejected"
    outcome: Literal["release", "refund"] = settle_dispute(
        resolution,
        job_id=case.job_id,
        escrow=ledger,
        node_wallet=case.node_wallet,
        proof_ref=f"arbiter:{case.evidence['kind']}:{case.evidence.get('segment_start')}",
    )
    record = ledger.status(job_id=case.job_id)
    destination = record.node_wallet if outcome == "release" else record.user_wallet
    _audit(action, case.job_id, success=True, reason=resolution.reason, destination=destination)
    slash = _slash(ledger, case) if resolution.upheld else None
    status = "refunded" if outcome == "refund" else "released"
    services.control_channel().set_status(case.job_id, status)
    return {
        "job_id": case.job_id,
        "evidence": case.describe(),
        "upheld": resolution.upheld,
        "reason": resolution.reason,
        "outcome": outcome,
        "state": record.state.value,
        "settle_signature": record.settle_signature,
        "slash": slash,
    }


def _slash(ledger: Any, case: Case) -> dict[str, Any]:
    from cyxwiz.ledger.stake import StakePolicy
    from tasks.node_stake import stake_ledger

    try:  # the node's staked account, whichever of its PeerIDs the escrow names (a renewal changes it)
        stake = stake_ledger(ledger=ledger, policy=ledger.stake_policy or StakePolicy()).slash(
            job_id=case.job_id, reason="dispute upheld: the committed segment does not reproduce"
        )
    except CyxwizError as exc:  # no stake, or slashed already: the refund stands; the sweep retries owed ones
        return {"slashed": False, "reason": exc.message}
    return {"slashed": True, "peer_id": stake.peer_id, "stake_left": stake.amount}


def to_markdown(decision: dict[str, Any]) -> str:
    slash = decision.get("slash") or {}
    lines = [
        f"# Dispute of {decision['job_id']}: {'upheld' if decision['upheld'] else 'rejected'}",
        "",
        "| | |",
        "|---|---|",
        f"| Evidence | {decision['evidence']} |",
        f"| Replay | {decision['reason']} |",
        f"| Settlement | {decision['outcome']} ({decision['state']}) |",
        f"| Transaction | `{decision['settle_signature']}` |",
    ]
    if decision["upheld"]:
        lines.append(f"| Stake slashed | {slash.get('slashed')} {slash.get('reason', '')} |")
    return "\n".join(lines) + "\n"
