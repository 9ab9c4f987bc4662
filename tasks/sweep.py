"""What the escrow sweep needs to know from Prefect: is the lifecycle run that owns an escrow still alive?

A run killed with its process (``kill -9`` of the control worker, a lost host) stays ``RUNNING`` in Prefect
forever: nothing reports for it. Prefect's flow engine sends a ``prefect.flow-run.heartbeat`` event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default, 30 at least) while the run lives, so a
``RUNNING`` run silent for ``silent_after_s`` is dead: it is marked ``CRASHED`` (forced, as nobody else
will) and counts as terminal, and the sweep settles its escrow at once instead of an hour past its deadline.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from cyxwiz.ledger.recovery import RunStatus

#: Default silence after which a RUNNING run is dead: 2.5 heartbeats at Prefect's default frequency (180 s).
RUN_SILENT_S = 450


def quiet_seconds(client: Any, run: Any, *, now: dt.datetime | None = None) -> float:
    """Seconds since the run last showed life: its latest ``prefect.flow-run.*`` event (a heartbeat or a
    state change), or its start when Prefect holds no event of it."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
        EventResourceFilter,
    )

    moment = now or dt.datetime.now(dt.UTC)
    since = run.start_time or run.created or moment
    events = client.read_events(
        EventFilter(
            occurred=EventOccurredFilter(since=since, until=moment + dt.timedelta(minutes=5)),
            event=EventNameFilter(prefix=["prefect.flow-run."]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
            order=EventOrder.DESC,
        ),
        limit=1,
    ).events
    last = events[0].occurred if events else since
    return max(0.0, (moment - last).total_seconds())


def lifecycle_run_state(run_id: str | None, *, silent_after_s: float = RUN_SILENT_S) -> RunStatus:
    """``running`` while the run may still settle its escrow itself; ``terminal`` once it ended (any
    final state, its rollback hooks ran or never will) or went silent for ``silent_after_s`` (its process
    is gone: it is marked CRASHED); ``gone`` when Prefect does not know it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    if not run_id:
        return "gone"
    try:
        key = uuid.UUID(run_id)
    except ValueError:
        return "gone"
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(key)
        except ObjectNotFound:
            return "gone"
        state = run.state
        if state is not None and state.is_final():
            return "terminal"
        if state is not None and state.is_running() and quiet_seconds(client, run) > silent_after_s:
            message = f"no heartbeat for more than {silent_after_s:g} s: its process is gone (escrow sweep)"
            client.set_flow_run_state(key, Crashed(message=message), force=True)
            return "terminal"
    return "running"


#: The lifecycle flow's name (flows/job_lifecycle.py).
LIFECYCLE_FLOW = "job-lifecycle"


def reap_lifecycles() -> list[str]:
    """The escrow-sweep's last step: lifecycle runs silent for the config's ``run_silent_s`` marked
    CRASHED, except a run whose release is held for its dispute window (the hold's rule, issue 20)."""
    from tasks import services
    from tasks.holds import open_hold_runs

    silent = services.config().run_silent_s
    return reap_silent_runs(LIFECYCLE_FLOW, silent_after_s=silent, keep=open_hold_runs())


def reap_silent_runs(
    flow_name: str, *, silent_after_s: float = RUN_SILENT_S, keep: AbstractSet[str] = frozenset()
) -> list[str]:
    """Mark every ``RUNNING`` run of ``flow_name`` that went silent for ``silent_after_s`` CRASHED (the ids).

    The escrow side asks :func:`lifecycle_run_state` only about jobs still open; a lifecycle killed after it
    closed its job (settled, archived, row written) would stay ``RUNNING`` in Prefect forever otherwise.
    One query per sweep, bounded by the runs in flight; ``keep``: runs another rule owns (a held release)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = runs_in_states(client, ["RUNNING"], flow_name=flow_name)
    return [
        str(run.id)
        for run in runs
        if str(run.id) not in keep
        and lifecycle_run_state(str(run.id), silent_after_s=silent_after_s) == "terminal"
    ]


def runs_in_states(client: Any, states: list[str], *, flow_name: str | None = None) -> list[Any]:
    """Every flow run in one of ``states`` (of ``flow_name`` when given), page by page: one read would stop
    at the server's default page size (200), and a run past it would never be found."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    wanted = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in states]))
    )
    flows = FlowFilter(name=FlowFilterName(any_=[flow_name])) if flow_name else None
    runs: list[Any] = []
    while batch := client.read_flow_runs(
        flow_filter=flows, flow_run_filter=wanted, offset=len(runs), limit=200
    ):
        runs.extend(batch)
        if len(batch) < 200:
            break
    return runs


#: The label Prefect's worker puts on every flow run it submits (``_give_worker_labels_to_flow_run``).
WORKER_LABEL = "prefect.worker.name"


def run_process_alive(pid: int) -> bool:
    """Whether ``pid`` is still a Prefect flow-run process on this host. A reused pid that runs something
    else is no flow run; a pid that cannot be read is taken for alive (the silence rule decides then)."""
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()  # noqa: SIM115  # one read of a procfs file
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return b"prefect" in cmdline or b"python" in cmdline


def crash_orphans_of(
    worker_name: str, *, alive: Callable[[int], bool] = run_process_alive, host_pid: int | None = None
) -> list[str]:
    """At a control worker's start: mark CRASHED every RUNNING or PENDING flow run that a worker of this
    name started on this host and whose process is gone (the ids).

    ``kill -9`` of a worker takes its flow runs with it (they are its children; systemd's control group
    too), and Prefect keeps them ``RUNNING`` until the silence rule (``run_silent_s``, minutes) finds them.
    The restarted worker knows at once: the run names it (:data:`WORKER_LABEL`) and its recorded process
    (``infrastructure_pid``) no longer exists. Marking it CRASHED lets the next escrow sweep settle its
    escrow, so the job is terminal one sweep interval after the restart (issue 21, F2). A run whose process
    still lives (the worker alone was killed) is left to finish; a run without a recorded process (never
    started) is left to Prefect's own rules. Worker names must be unique per host (the systemd unit and the
    embedded stack name theirs)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    own = host_pid if host_pid is not None else os.getpid()
    crashed: list[str] = []
    with get_client(sync_client=True) as client:
        for run in runs_in_states(client, ["RUNNING", "PENDING"]):
            if run.labels.get(WORKER_LABEL) != worker_name or not run.infrastructure_pid:
                continue
            try:
                pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
            except ValueError:
                continue
            if pid == own or alive(pid):
                continue
            message = f"its worker {worker_name!r} restarted and the run's process {pid} is gone"
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            crashed.append(str(run.id))
    return crashed
