"""``job-lifecycle``: validate → escrow → dispatch → sandboxed-train on the node → verify → settle → archive.

Runs in the trusted zone (the ``control`` pool, or in-process from Python / ``cyxwiz job submit``). The
escrow lock and the dispatch run inside a Prefect ``transaction()``: if anything after them fails, their
``on_rollback`` hooks refund the escrow and revoke the job token. A killed process runs no hooks, so the
scheduled ``escrow-sweep`` flow reconciles what a crash left behind (ARCHITECTURE step 2).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.transactions import Transaction, get_transaction, transaction

from cyxwiz.errors import AuthorizationError, NotFoundError, ValidationError
from cyxwiz.verification.binding import bind_training_doc
from tasks import holds, redundant, services
from tasks.control import (
    MAX_AWAIT_FUNDING_S,
    JobRequest,
    await_funding,
    check_dataset,
    dataset_sources,
    funding_of,
    minimum_payment,
    open_unfunded,
    parse_job_request,
    prepare_inputs,
    replica_request,
    replica_spec,
)


@task(name="await-funding")
def wait_for_funding(spec: dict[str, Any], timeout_s: int) -> dict[str, Any]:
    """A run started without the user's signed lock (the UI form): validate, open the job row as
    ``awaiting-funding`` and wait, bounded, for the owner's client to hand the lock in (F1)."""
    logger = get_run_logger()
    config = services.config()
    control = services.control_channel()
    request = open_unfunded(
        control, spec, sources=dataset_sources(services.store()), minimum_payment=minimum_payment(config)
    )
    how = f"cyxwiz job fund {request.job_id} --wallet YOUR_WALLET"
    logger.info(
        "job %s waits up to %s s for %s to sign its escrow lock: %s",
        request.job_id,
        timeout_s,
        request.user,
        how,
    )
    create_markdown_artifact(
        key=f"funding-{request.job_id}",
        markdown=f"Job `{request.job_id}` of `{request.user}` waits {timeout_s} s for funding:\n\n`{how}`",
        description=f"Funding instructions for {request.job_id}",
    )
    funding = await_funding(control, request.job_id, timeout_s=timeout_s)
    logger.info("job %s funded by %s", request.job_id, funding.get("wallet"))
    return {**spec, "job_id": request.job_id, "funding": funding}


@task(name="validate-job-spec")
def validate(spec: dict[str, Any], node: str | None = None, replica_node: str | None = None) -> JobRequest:
    """Validate fully before anything exists; then make sure the coordinator has the job row (G1, G2).

    Fully means the data too: read, hash-checked and validated here, so a tampered or malformed dataset
    refuses the job before any escrow (D3, F3). A submission the user's client funded carries its job id
    (the lock is signed for it); through the coordinator API the row exists already, from Python or the
    Prefect UI it is made here.
    """
    config = services.config()
    request = parse_job_request(spec, minimum_payment=minimum_payment(config))
    funding_of(spec, job_id=request.job_id)  # no signed lock for this job: refused before any row exists
    if request.replica_job_id is not None:
        redundant.check_fundings(request, spec)
        redundant.require_two_nodes(node=node, replica_node=replica_node)
    check_dataset(request, dataset_sources(services.store()))
    control = services.control_channel()
    try:
        owner = control.job(request.job_id).get("user_id")
    except NotFoundError:
        control.create_job(
            user=request.user,
            spec=request.training_doc,
            duration_s=request.wall_seconds,
            job_id=request.job_id,
        )
    else:
        if owner != request.user:
            raise AuthorizationError("the job row belongs to another user", field="job_id", rule="C2")
    if request.replica_job_id is not None:
        redundant.ensure_replica_row(request)
    return request


def _deadline(request: JobRequest) -> dt.datetime:
    """When the escrow-sweep may refund a job whose lifecycle died: wall time + dispatch margin (F2)."""
    margin = services.config().dispatch_margin_s
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=request.wall_seconds + margin)


def _run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


@task(name="lock-escrow")
def lock_escrow(request: JobRequest, spec: dict[str, Any]) -> dict[str, Any]:
    """Lock with the message the user's client signed; the control plane holds no user key (F1, C2)."""
    from cyxwiz.ledger.client_funding import lock_signed

    record = lock_signed(
        services.ledger(),
        funding_of(spec, job_id=request.job_id),
        amount=request.payment,
        user=request.user,
        deadline=_deadline(request),
        run_id=_run_id(),
    )
    txn = get_transaction()
    if txn is not None:
        txn.set("job_id", request.job_id)
    get_run_logger().info(
        "escrow locked for %s: %s base units from %s in %s",
        request.job_id,
        request.payment,
        record.user_wallet,
        record.escrow_account,
    )
    return {
        "escrow_account": record.escrow_account,
        "amount": request.payment,
        "state": str(record.state),
        "user_wallet": record.user_wallet,
    }


@lock_escrow.on_rollback
def _refund_on_rollback(txn: Transaction) -> None:
    job_id = txn.get("job_id")
    services.refund_if_locked(job_id, reason="lifecycle rolled back")


@task(name="dispatch")
def dispatch(request: JobRequest, node: str | None) -> dict[str, Any]:
    control = services.control_channel()
    prepared = prepare_inputs(services.store(), request)
    assignment = control.assign(request.job_id, node=node)
    services.require_stake(assignment.get("peer_id"))  # no stake, no dispatch (F1)
    # The per-job secret exists only from here on: nothing computed before the assignment fits (issue 20).
    training_doc = bind_training_doc(prepared.training_doc)
    services.ledger().assign(
        job_id=request.job_id,
        node_wallet=assignment["wallet"],
        node_peer_id=assignment.get("peer_id"),
        deadline=_deadline(request),
    )
    txn = get_transaction()
    if txn is not None:
        txn.set("job_id", request.job_id)
    return {
        "assignment": assignment,
        "training_doc": training_doc,
        "holdout_key": prepared.holdout_key,
        "holdout_sha256": prepared.holdout_sha256,
        "dataset_key": prepared.dataset_key,
        "holdout_source": prepared.holdout_source,
    }


@dispatch.on_rollback
def _revoke_token_on_rollback(txn: Transaction) -> None:
    services.control_channel().revoke_job_token(txn.get("job_id"))


@task(name="run-on-node")
def run_on_node(request: JobRequest, dispatched: dict[str, Any], redispatch: bool = True) -> dict[str, Any]:
    """The node's ``sandboxed-train`` run, followed to its end; a node lost mid-job (heartbeat gone, run
    crashed or silent) is replaced by another while a whole attempt fits before the deadline (F1, F2).
    ``dispatched`` in the answer is the assignment that counts (the last attempt's). A redundant job's
    share is never re-dispatched (``redispatch=False``): it keeps its node and its pairing (issue 20)."""
    from tasks.redispatch import run_until_done

    return run_until_done(request, dispatched, may_redispatch=redispatch).summary()


@task(name="verify-result")
def verify(
    request: JobRequest,
    dispatched: dict[str, Any],
    escrow: dict[str, Any],
    partner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # The verifier service verifies and signs its verdict in its own process (F1); the attestation is
    # what the ledger needs to release (tasks.verifier_service.verify_hook adds the holdout's source).
    # ``partner``: the other share of a redundant job, which the verifier referees this one against.
    report, attestation = services.attested_verification(
        request=request, dispatched=dispatched, escrow=escrow["escrow_account"], partner=partner
    )
    create_markdown_artifact(
        key=f"verification-{request.job_id}",
        markdown=report.to_markdown(),
        description=f"Verification report of {request.job_id}",
    )
    verdict = {**report.to_dict(), "attestation": attestation}
    # The verdict is an audit event; its leaf hash is what the settlement memo cites (issue 19).
    verdict["audit_event"] = services.audit_verdict(verdict, node_id=dispatched["assignment"].get("node_id"))
    return verdict


@task(name="settle-escrow")
def settle(request: JobRequest, dispatched: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    ledger = services.ledger()
    if report["passed"] and request.dispute_window_s:
        # The spec asks for a dispute window: the verified release waits for it (issue 20, F1).
        return holds.hold_release(request, dispatched, report)
    if report["passed"]:
        record = ledger.release(
            job_id=request.job_id,
            node_wallet=dispatched["assignment"]["wallet"],
            report=report["attestation"],
        )
    else:
        reasons = "; ".join(f"{c['name']}: {c['reason']}" for c in report["checks"] if not c["passed"])
        record = ledger.refund(
            job_id=request.job_id,
            reason=f"verification failed: {reasons}"[:500],
            report=report["attestation"],
        )
    return {
        "state": str(record.state),
        "escrow_account": record.escrow_account,
        "report_sha256": record.report_sha256,
        "settle_signature": record.settle_signature,
        "memo": ledger.settlement_memo(job_id=request.job_id),
    }


@task(name="dispute-window")
def dispute_window(request: JobRequest, settlement: dict[str, Any]) -> dict[str, Any]:
    """Wait out a held release outside the rollback transaction: a failure here never refunds a verified
    job; the escrow sweep finishes what a dead lifecycle left (issue 20, F1, F2)."""
    if settlement.get("state") != "held" or request.dispute_window_s > holds.WAIT_LIMIT_S:
        return settlement  # a long window is not waited out here: the escrow sweep settles it later
    outcome = holds.await_window(request.job_id)
    record = services.ledger().status(job_id=request.job_id)
    return {
        **settlement,
        "state": outcome,
        "report_sha256": record.report_sha256,
        "settle_signature": record.settle_signature,
        "memo": services.ledger().settlement_memo(job_id=request.job_id) if outcome == "released" else None,
    }


def _status(report: dict[str, Any], settlement: dict[str, Any]) -> str:
    if settlement.get("state") in ("disputed", "held"):
        return str(settlement["state"])
    return "released" if report["passed"] else "refunded"


@task(name="archive", retries=2, retry_delay_seconds=2)
def archive(request: JobRequest, report: dict[str, Any], settlement: dict[str, Any]) -> list[str]:
    return services.archive(request=request, report=report, settlement=settlement)


@flow(name="job-lifecycle", log_prints=False)
def job_lifecycle(
    spec: dict[str, Any],
    node: str | None = None,
    replica_node: str | None = None,
    await_funding_s: int = 0,
) -> dict[str, Any]:
    """Run one job end to end. ``spec`` is the user's job spec; ``node`` pins a node (tests, demos), and
    ``replica_node`` the second node of a redundant job (``verification.mode: redundant``).

    ``await_funding_s`` (the Prefect UI form, where no user key can sign): a spec without ``funding`` is
    held open that many seconds (at most an hour) for its owner's ``cyxwiz job fund JOB``; 0 refuses it.
    """
    logger = get_run_logger()
    if spec.get("funding") is None and await_funding_s:
        if not 0 < await_funding_s <= MAX_AWAIT_FUNDING_S:
            raise ValidationError(
                f"must be in 1..{MAX_AWAIT_FUNDING_S} seconds", field="await_funding_s", rule="F1"
            )
        spec = wait_for_funding(spec, await_funding_s)
    request = validate(spec, node, replica_node)
    data = request.dataset_spec()
    logger.info(
        "job %s of %s validated: payment %s, dataset %s, holdout %s",
        request.job_id, request.user, request.payment,
        data.public or (data.data.uri if data.data else "-"), data.holdout_source,
    )  # fmt: skip
    started = dt.datetime.now(dt.UTC)
    if request.replica_job_id is not None:
        return _redundant(request, spec, node, replica_node, started)
    with transaction():
        escrow = lock_escrow(request, spec)
        dispatched = dispatch(request, node)
        assigned = dispatched["assignment"]
        logger.info("job %s dispatched to %s (%s)", request.job_id, assigned["name"], assigned.get("peer_id"))
        ran = run_on_node(request, dispatched)
        dispatched = ran.pop("dispatched")  # a re-dispatch changed node, payee and per-job secret
        logger.info("node run of %s ended %s %s", request.job_id, ran["state"], ran["message"])
        report = verify(request, dispatched, escrow)
        failed = [c["name"] for c in report["checks"] if not c["passed"]]
        logger.info(
            "verification of %s: %s", request.job_id, "passed" if report["passed"] else f"failed {failed}"
        )
        settlement = settle(request, dispatched, report)
        logger.info(
            "escrow of %s %s (%s)", request.job_id, settlement["state"], settlement["settle_signature"]
        )
    settlement = dispute_window(request, settlement)
    keys = archive(request, report, settlement)
    logger.info("job %s archived: %d objects", request.job_id, len(keys))
    services.control_channel().set_status(request.job_id, _status(report, settlement))
    summary = {
        "job_id": request.job_id,
        "escrow": escrow,
        "node": dispatched["assignment"]["node_id"],
        "node_run": ran,
        "verification": _verdict_summary(report),
        "settlement": settlement,
        "archived": keys,
        "seconds": _seconds(started),
    }
    _summary_artifact(request.job_id, summary)
    return summary


def _verdict_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The verdict in the run's summary: passed, each failed check with its reason, the report's summary."""
    failed = [{"name": c["name"], "reason": c["reason"]} for c in report["checks"] if not c["passed"]]
    return {"passed": report["passed"], "failed": failed, **report.get("summary", {})}


def _redundant(
    request: JobRequest,
    spec: dict[str, Any],
    node: str | None,
    replica_node: str | None,
    started: dt.datetime,
) -> dict[str, Any]:
    """Refereed delegation (issue 20): both shares locked, trained on two nodes at once, each verified
    and refereed against the other, each escrow settled by its own node's verdict; a deviator slashed."""
    logger = get_run_logger()
    replica = replica_request(request)
    with transaction():
        escrows = [lock_escrow(request, spec), lock_escrow(replica, replica_spec(spec))]
        first = dispatch(request, node)
        second = redundant.dispatch_replica(replica, first, replica_node)
        shares = [(request, first), (replica, second)]
        futures = [run_on_node.submit(req, disp, redispatch=False) for req, disp in shares]
        runs = [future.result() for future in futures]
        for run in runs:
            run.pop("dispatched")  # never re-dispatched: the share's own assignment still counts
        for (req, _), ran in zip(shares, runs, strict=True):
            logger.info("node run of %s ended %s %s", req.job_id, ran["state"], ran["message"])
        partners = [redundant.partner_of(replica, second), redundant.partner_of(request, first)]
        reports = [
            verify(req, disp, escrow, partner)
            for (req, disp), escrow, partner in zip(shares, escrows, partners, strict=True)
        ]
        settlements = [settle(req, disp, rep) for (req, disp), rep in zip(shares, reports, strict=True)]
    settlements = [
        dispute_window(req, settled) for (req, _), settled in zip(shares, settlements, strict=True)
    ]
    slashes = [redundant.slash_deviator(req, rep) for (req, _), rep in zip(shares, reports, strict=True)]
    nodes = []
    for (req, disp), ran, rep, settled, slashed, escrow in zip(
        shares, runs, reports, settlements, slashes, escrows, strict=True
    ):
        keys = archive(req, rep, settled)
        services.control_channel().set_status(req.job_id, _status(rep, settled))
        referee: dict[str, Any] = next((c for c in rep["checks"] if c["name"] == "referee"), {})
        nodes.append({
            "job_id": req.job_id, "node": disp["assignment"]["node_id"],
            "peer_id": disp["assignment"].get("peer_id"), "escrow": escrow, "node_run": ran,
            "verification": _verdict_summary(rep),
            "referee": {"passed": referee.get("passed"), "reason": referee.get("reason"),
                        **(referee.get("details") or {})},
            "settlement": settled, "slash": slashed, "archived": keys,
        })  # fmt: skip
    summary = {
        "job_id": request.job_id,
        "mode": "redundant",
        "escrow": escrows[0],
        "node": nodes[0]["node"],
        "node_run": runs[0],
        "verification": nodes[0]["verification"],
        "settlement": settlements[0],
        "archived": nodes[0]["archived"],
        "nodes": nodes,
        "seconds": _seconds(started),
    }
    _summary_artifact(request.job_id, summary)
    return summary


def _seconds(started: dt.datetime) -> float:
    return round((dt.datetime.now(dt.UTC) - started).total_seconds(), 2)


def _summary_artifact(job_id: str, summary: dict[str, Any]) -> None:
    create_table_artifact(
        key=f"job-{job_id}",
        table=[{"step": k, "result": str(v)} for k, v in summary.items()],
        description=f"Lifecycle of {job_id}",
    )
