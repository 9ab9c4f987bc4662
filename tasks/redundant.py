"""Lifecycle tasks of refereed delegation (``verification.mode: redundant``; issue 20, SPEC F1, threat I).

A redundant job is two shares of one bound training document: the job the user submitted and a second
job (its own id, its own escrow the user's client funded with a second signed lock) on another node, by
PeerID. Both shares train the same data with the same per-job secret, so honest nodes commit identical
chains; the verifier service referees any difference (:mod:`tasks.referee`). Each escrow is settled by
its own node's verdict: a node that reproduces is paid its share, a deviating node's escrow goes back to
the user and its stake is slashed by the configured share. Supply is conserved: every base unit locked
ends in exactly one wallet.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task
from prefect.transactions import Transaction, get_transaction

from cyxwiz.errors import CyxwizError, ValidationError
from tasks import services
from tasks.control import JobRequest


def require_two_nodes(*, node: str | None = None, replica_node: str | None = None) -> None:
    """Refuse a redundant job before any escrow exists when two distinct nodes cannot take it (F1)."""
    control = services.control_channel()
    first = control.eligible(node=node)
    if not first:
        return  # the ordinary dispatch refusal names the missing node
    peers = {record.peer_id for record, _ in [*first, *control.eligible(node=replica_node)]}
    if len(peers) < 2:
        raise ValidationError(
            f"redundant mode needs two eligible nodes with distinct PeerIDs; {len(peers)} available",
            field="verification.mode",
            rule="F1",
        )


def check_fundings(request: JobRequest, spec: dict[str, Any]) -> None:
    """Both signed locks, checked against the ledger's public terms before either is sent: a second lock
    that is not the user's exact lock for the second share must not leave the first one locked (F1)."""
    from cyxwiz.ledger.client_funding import check_funding
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.view import LedgerView
    from tasks.control import funding_of, replica_spec

    assert request.replica_job_id is not None
    shares = [(request.job_id, spec), (request.replica_job_id, replica_spec(spec))]
    view = LedgerView.from_config(LedgerConfig.from_file(services.config().ledger_config))
    try:
        terms = view.funding_terms()
        for job_id, share in shares:
            funding = funding_of(share, job_id=job_id)
            check_funding(funding, terms=terms, job_id=job_id, amount=request.payment, user=request.user)
    finally:
        view.close()


def ensure_replica_row(request: JobRequest) -> None:
    """The second share's coordinator job row (its own job token, inputs, outputs and proof, C3). The id
    must be new: an existing job (even the same user's, say one a node is working on) is never taken over
    as a second share; only this lifecycle's own earlier attempt (never assigned, same document) is reused."""
    from cyxwiz.errors import AuthorizationError, ConflictError, NotFoundError

    assert request.replica_job_id is not None
    control = services.control_channel()
    spec = {**request.training_doc, "job_id": request.replica_job_id}
    try:
        existing = control.job(request.replica_job_id)
    except NotFoundError:
        control.create_job(
            user=request.user, spec=spec, duration_s=request.wall_seconds, job_id=request.replica_job_id
        )
        return
    if existing.get("user_id") != request.user:
        raise AuthorizationError(
            "the job row belongs to another user", field="replica_funding.job_id", rule="C2"
        )
    stored = control.store.job(request.replica_job_id).spec  # type: ignore[attr-defined]
    if existing.get("status") != "submitted" or stored != spec:
        raise ConflictError(
            "names an existing job: the second share needs a new job id",
            field="replica_funding.job_id",
            rule="F1",
        )


def copy_inputs(first: dict[str, Any], replica: JobRequest) -> dict[str, Any]:
    """The second share's inputs: the first share's training data (same bytes, same hash) and its bound
    document re-addressed to the second job id; the holdout stays the one trusted-side copy."""
    import json

    from cyxwiz.storage import layout

    store = services.store()
    doc = json.loads(json.dumps(first["training_doc"]))
    doc["job_id"] = replica.job_id
    doc["dataset"]["uri"] = replica.training_doc["dataset"]["uri"]
    dataset_key = layout.job_input(replica.job_id, "dataset.npz")
    store.put_bytes(dataset_key, store.get_bytes(first["dataset_key"]))
    unbound = json.loads(json.dumps(doc))
    unbound["training"].pop("job_secret", None)  # the readable job.json never carries the secret
    store.put_bytes(
        layout.job_input(replica.job_id, "job.json"), json.dumps(unbound, sort_keys=True).encode()
    )
    return {**first, "training_doc": doc, "dataset_key": dataset_key}


@task(name="dispatch-second-node")
def dispatch_replica(replica: JobRequest, first: dict[str, Any], node: str | None) -> dict[str, Any]:
    """Assign the second share to another node than the first (never the same PeerID twice, A5)."""
    from cyxwiz.errors import ConflictError

    control = services.control_channel()
    taken = {str(first["assignment"]["node_id"]), str(first["assignment"].get("peer_id"))}
    try:
        assignment = control.assign(replica.job_id, node=node, exclude=taken)
    except ConflictError as exc:
        raise ValidationError(
            f"redundant mode needs a second node: {exc.message}", field="verification.mode", rule="F1"
        ) from None
    if assignment.get("peer_id") in taken:  # pragma: no cover - assign excludes it; belt and braces
        raise ValidationError("the second node is the first one", field="verification.mode", rule="F1")
    services.require_stake(assignment.get("peer_id"))
    dispatched = {**copy_inputs(first, replica), "assignment": assignment}
    margin = services.config().dispatch_margin_s
    services.ledger().assign(
        job_id=replica.job_id,
        node_wallet=assignment["wallet"],
        node_peer_id=assignment.get("peer_id"),
        deadline=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=replica.wall_seconds + margin),
    )
    from cyxwiz.audit import events as ev

    # Who may act on the second share, and that it is another node than the first's (H2).
    services.audit().record(
        ev.make_event(
            event_type=ev.EventType.AUTHORIZATION, actor_id="control-plane", actor_type=ev.ActorType.SERVICE,
            resource=f"job:{replica.job_id}", action="job.dispatch-second", outcome=ev.Outcome.SUCCESS,
            details={
                "first_job": str(first["training_doc"]["job_id"]),
                "first_node": str(first["assignment"]["node_id"]),
                "node_id": str(assignment["node_id"]),
            },
        )
    )  # fmt: skip
    txn = get_transaction()
    if txn is not None:
        txn.set("job_id", replica.job_id)
    return dispatched


@dispatch_replica.on_rollback
def _revoke_replica_token(txn: Transaction) -> None:
    services.control_channel().revoke_job_token(txn.get("job_id"))


def partner_of(request: JobRequest, dispatched: dict[str, Any]) -> dict[str, Any]:
    """What the verifier service needs of the other share to referee this one."""
    return {"request": request.to_dict(), "dispatched": dispatched}


@task(name="slash-deviator")
def slash_deviator(request: JobRequest, report: dict[str, Any]) -> dict[str, Any] | None:
    """Slash the stake of a node the referee found deviating, with the verifier's ``fraud`` attestation
    for its share (F1); a crash, a timeout or an unusable pairing slashes nothing."""
    from cyxwiz.ledger.attestation import ReportAttestation
    from cyxwiz.ledger.config import LedgerConfig
    from tasks.node_stake import stake_ledger

    referee = next((c for c in report.get("checks", []) if c["name"] == "referee"), None)
    attestation = ReportAttestation.parse(report["attestation"])
    if referee is None or referee["passed"] or attestation.verdict != "fraud":
        return None
    policy = LedgerConfig.from_file(services.config().ledger_config).stake_policy()
    try:
        stake = stake_ledger(policy=policy).slash(job_id=request.job_id, report=report["attestation"])
    except CyxwizError as exc:  # an empty stake or an earlier slash: the refund stands, say why
        get_run_logger().warning("no slash for %s: %s", request.job_id, exc)
        return {"peer_id": attestation.node_peer_id, "slashed": False, "reason": exc.message}
    return {"peer_id": stake.peer_id, "slashed": True, "stake_left": stake.amount, "total": stake.slashed}
