"""Run the job on its node and, when that node is lost mid-job, on another one while the deadline allows.

A node is *lost* when its heartbeat to the coordinator is older than ``node_lost_s`` (killed, crashed,
cut off by a partition) while its flow run is not over, when that run ended ``CRASHED`` (its process died
under the worker), or when the run stopped sending Prefect's flow-run heartbeats for ``run_silent_s``
(the agent came back but the run it held is an orphan nobody will finish). The lost attempt's flow run is
marked ``CRASHED`` (the truth, for the UI and for the sweep), and the job is assigned to another healthy
node with a fresh per-job secret, its escrow's payee changed with it (F1: only the node that ran the
accepted attempt can be paid; the lost node's job token stops working the moment the job row names
another node, C3). A new attempt starts only while a whole one (the job's wall time) still fits before the
job's deadline; otherwise the run ends as it is and verification refunds (F1, F2).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cyxwiz.errors import ConflictError
from cyxwiz.verification.binding import bind_training_doc

if TYPE_CHECKING:
    from tasks.control import JobRequest

#: Seconds between two looks at the node's run and heartbeat.
POLL_S = 1.0


@dataclass(frozen=True, kw_only=True)
class Attempt:
    node_id: str
    flow_run_id: str
    state: str
    message: str
    lost: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "flow_run_id": self.flow_run_id,
            "state": self.state,
            "message": self.message,
            "lost": self.lost,
        }


@dataclass(kw_only=True)
class NodeRun:
    """What ``run-on-node`` returns: the last attempt's run, every attempt, the dispatch that counts."""

    dispatched: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        last = self.attempts[-1]
        return {
            "flow_run_id": last.flow_run_id,
            "state": last.state,
            "message": last.message,
            "attempts": [a.to_dict() for a in self.attempts],
            "dispatched": self.dispatched,
        }


def lost_reason(
    *,
    state: str,
    final: bool,
    last_heartbeat: dt.datetime | None,
    run_quiet_for: float | None,
    now: dt.datetime,
    node_lost_s: float,
    run_silent_s: float,
) -> str | None:
    """Why the node running this attempt counts as lost, or None while it may still finish it."""
    if state == "CRASHED":
        return "its flow run crashed"
    if final:
        return None
    if last_heartbeat is None or (now - last_heartbeat).total_seconds() > node_lost_s:
        return f"no heartbeat for more than {node_lost_s:g} s"
    if state == "RUNNING" and run_quiet_for is not None and run_quiet_for > run_silent_s:
        return f"its flow run sent no heartbeat for {run_quiet_for:.0f} s"
    return None


def run_until_done(
    request: JobRequest,
    dispatched: dict[str, Any],
    *,
    start_run: Callable[[dict[str, Any], float], str] | None = None,
    may_redispatch: bool = True,
) -> NodeRun:
    """Start the node's flow run and follow it; re-dispatch after a loss while a whole attempt fits.
    ``may_redispatch=False``: a share of a redundant job keeps its node (a new node could be the other
    share's, a new secret would unpair the two); a lost share is refunded by its verification."""
    from tasks import services

    config = services.config()
    control = services.control_channel()
    start = start_run or _start_run(request)
    deadline = time.monotonic() + _time_left(request, config.dispatch_margin_s)
    result = NodeRun(dispatched=dispatched)
    lost_nodes: list[str] = []
    while True:
        node_id = str(dispatched["assignment"]["node_id"])
        run_id = start(dispatched, max(1.0, deadline - time.monotonic()))
        attempt = _follow(
            run_id, node_id=node_id, control=control, deadline=deadline,
            node_lost_s=config.node_lost_s, run_silent_s=config.run_silent_s,
        )  # fmt: skip
        result.attempts.append(attempt)
        if attempt.lost is None:
            return result
        _mark_crashed(run_id, f"node {node_id} lost: {attempt.lost}")
        lost_nodes.append(node_id)
        if not may_redispatch or deadline - time.monotonic() < request.wall_seconds:
            return result  # no whole attempt fits any more: verification refunds (F1)
        try:
            dispatched = redispatch(request, dispatched, exclude=lost_nodes)
        except ConflictError:
            return result  # no other healthy node: the same refund
        result.dispatched = dispatched


def redispatch(request: JobRequest, dispatched: dict[str, Any], *, exclude: list[str]) -> dict[str, Any]:
    """Assign the job to another node (not one of ``exclude``): job row, stake, payee, a fresh secret."""
    from tasks import services

    control = services.control_channel()
    assignment = control.assign(request.job_id, exclude=exclude)
    services.require_stake(assignment.get("peer_id"))
    services.ledger().assign(
        job_id=request.job_id, node_wallet=assignment["wallet"], node_peer_id=assignment.get("peer_id")
    )
    doc = {**dispatched["training_doc"], "training": dict(dispatched["training_doc"]["training"])}
    doc["training"].pop("job_secret", None)  # the lost node saw the old one: the new attempt gets its own
    from cyxwiz.audit import events as ev

    # Who may act on the job changed: an authorization event (H2), naming the lost and the new node.
    services.audit().record(
        ev.make_event(
            event_type=ev.EventType.AUTHORIZATION, actor_id="control-plane", actor_type=ev.ActorType.SERVICE,
            resource=f"job:{request.job_id}", action="job.redispatch", outcome=ev.Outcome.SUCCESS,
            details={"lost_nodes": list(exclude), "node_id": str(assignment["node_id"])},
        )
    )  # fmt: skip
    return {**dispatched, "assignment": assignment, "training_doc": bind_training_doc(doc)}


def _time_left(request: JobRequest, margin_s: int) -> float:
    """Seconds until the job's deadline: the one its escrow was locked with (wall time + margin)."""
    from tasks import services

    deadline: dt.datetime | None = services.ledger().status(job_id=request.job_id).deadline
    if deadline is None:
        return float(request.wall_seconds + margin_s)
    left: float = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
    return max(0.0, left)


def _start_run(request: JobRequest) -> Callable[[dict[str, Any], float], str]:
    def start(dispatched: dict[str, Any], _time_left: float) -> str:
        from prefect.deployments import run_deployment

        from tasks import services

        flow_run = run_deployment(
            services.config().train_deployment,
            parameters={"job_id": request.job_id, "job": dispatched["training_doc"]},
            work_queue_name=dispatched["assignment"]["queue"],
            timeout=0,  # followed below, with the node's heartbeat beside the run's state
            job_variables={"memory_mb": request.memory_mb, "wall_seconds": request.wall_seconds},
        )
        return str(flow_run.id)  # type: ignore[union-attr]  # the sync call returns a FlowRun

    return start


def _follow(
    run_id: str,
    *,
    node_id: str,
    control: Any,
    deadline: float,
    node_lost_s: float,
    run_silent_s: float,
) -> Attempt:
    from prefect.client.orchestration import get_client

    from tasks import services
    from tasks.coordinator_health import judged_heartbeat, probe
    from tasks.sweep import quiet_seconds

    config = services.config()
    coordinator = probe(config.coordinator_url, config.pki_root)

    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(uuid.UUID(run_id))
            state = run.state.type.value if run.state else "UNKNOWN"
            message = (run.state.message or "") if run.state else ""
            final = bool(run.state and run.state.is_final())
            now = dt.datetime.now(dt.UTC)
            quiet = quiet_seconds(client, run, now=now) if state == "RUNNING" else None
            # A beat is judged only over time the coordinator was up to take it (issue 21).
            beat = judged_heartbeat(
                _heartbeat(control, node_id), now=now, node_lost_s=node_lost_s, started_at=coordinator
            )
            lost = lost_reason(
                state=state, final=final, last_heartbeat=beat, run_quiet_for=quiet,
                now=now, node_lost_s=node_lost_s, run_silent_s=run_silent_s,
            )  # fmt: skip
            if final or lost or time.monotonic() >= deadline:
                return Attempt(node_id=node_id, flow_run_id=run_id, state=state, message=message, lost=lost)
            time.sleep(POLL_S)


def _heartbeat(control: Any, node_id: str) -> dt.datetime | None:
    for record in control.store.list_nodes():
        if record.node_id == node_id:
            beat: dt.datetime | None = record.last_heartbeat
            return beat
    return None


def _mark_crashed(run_id: str, why: str) -> None:
    """Say in Prefect what happened to the lost attempt (forced: its own process will never report)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(run_id), Crashed(message=why[:500]), force=True)
