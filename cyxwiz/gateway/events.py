"""Prefect event filtering at the gateway (SPEC C3, I): what a node may see and what it may emit.

Pure functions over the JSON the Prefect event websockets carry, given what the gateway has seen the node
own (:class:`~cyxwiz.gateway.model.NodeView`). Prefect automations act on events, so an event forged about
another node's run, worker or queue is an attempt to steer work that is not the node's. The rule is over
*every* resource an event names (its resource and each related one), never "any of them": one foreign or
unattributable id refuses the whole event.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cyxwiz.gateway.ids import canonical_uuid_or_none
from cyxwiz.gateway.model import NodeView

#: Why an event a node tried to emit was dropped.
NOT_AN_EVENT = "not an event"
NOT_THE_NODES = "event about a resource that is not the node's"
NOT_ABOUT_OWN_WORK = "event names none of the node's runs or its worker"


def json_object(text: str) -> dict[str, Any] | None:
    """A websocket text message as a JSON object, or None when it is anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_FLOW_RUN = "prefect.flow-run."


def resource_ids(event: dict[str, Any]) -> list[str] | None:
    """The event's resource id, then those of its related resources; None when malformed."""
    resource = event.get("resource")
    related = event.get("related", [])
    if not isinstance(resource, dict) or not isinstance(related, list):
        return None
    ids = [resource.get("prefect.resource.id")]
    ids += [r.get("prefect.resource.id") if isinstance(r, dict) else None for r in related]
    return [i for i in ids if isinstance(i, str)] if all(isinstance(i, str) for i in ids) else None


def flow_run_of(rid: str) -> str | None:
    """The flow run id a ``prefect.flow-run.<id>`` resource names (canonical), else None."""
    return canonical_uuid_or_none(rid.removeprefix(_FLOW_RUN)) if rid.startswith(_FLOW_RUN) else None


def artifact_run_of(rid: str, artifact_runs: dict[str, str]) -> str | None:
    """The flow run a ``prefect.artifact.<id>`` resource was created for, when the gateway saw it made."""
    prefix = "prefect.artifact."
    ident = canonical_uuid_or_none(rid.removeprefix(prefix)) if rid.startswith(prefix) else None
    return artifact_runs.get(ident) if ident is not None else None


def worker_name(queue: str) -> str:
    """The name the node agent gives its Prefect worker (``agents.__main__``)."""
    return f"cyxwiz-{queue}"


TaskCheck = Callable[[str], bool]


def _verdict(rid: str, view: NodeView, *, queue: str, pool_ids: set[str], tasks: TaskCheck) -> str:
    """'own', 'task' (one of the node's task runs: the event must also name its flow run), 'tag', or
    'foreign'. ``tasks`` says whether a task run is the node's (:class:`~cyxwiz.gateway.model.TaskRuns`)."""
    kind, _, rest = rid.removeprefix("prefect.").partition(".")
    if not rid.startswith("prefect.") or not rest:
        return "foreign"
    if kind == "tag":
        return "tag"
    if kind == "worker":
        # prefect.worker.<type>.<slug of name>
        return "own" if rest.partition(".")[2] == worker_name(queue) else "foreign"
    ident = canonical_uuid_or_none(rest)
    if ident is None:
        return "foreign"
    owned = {
        "flow-run": view.runs,
        "deployment": view.deployments,
        "flow": view.flows,
        "work-queue": view.queue_ids,
        "work-pool": pool_ids,
        # the client announces artifacts it created (``prefect.artifact.created``/``updated``)
        "artifact": view.artifacts,
    }.get(kind)
    if kind == "task-run":
        return "task" if tasks(ident) else "foreign"
    return "own" if owned is not None and ident in owned else "foreign"


def emit_refusal(
    text: str, view: NodeView, *, queue: str, pool_ids: set[str], tasks: TaskCheck
) -> str | None:
    """Why an ``events/in`` message must be dropped, or None when every resource it names is the node's.

    The event must be about the node's own work — one of its flow runs or its own worker — and every other
    resource it names must be the node's too (task runs count through the node's flow run the event names;
    tags are labels, not resources).
    """
    event = json_object(text)
    if event is None:
        return NOT_AN_EVENT
    if event.get("type") == "auth" and set(event) <= {"type", "token"}:
        return None  # the client's opening message; the gateway swaps in its own credential
    ids = resource_ids(event)
    if not ids or not isinstance(event.get("event"), str):
        return NOT_AN_EVENT
    own_run = any(
        _verdict(i, view, queue=queue, pool_ids=pool_ids, tasks=_never) == "own"
        for i in ids
        if i.startswith(_FLOW_RUN)
    )
    # A task run is the node's only through an event about one of the node's own flow runs.
    verdicts = [
        _verdict(i, view, queue=queue, pool_ids=pool_ids, tasks=tasks if own_run else _never) for i in ids
    ]
    if "foreign" in verdicts:
        foreign = ids[verdicts.index("foreign")]
        # The kind (not the id) names what was foreign: reasons stay groupable in the audit log.
        return f"{NOT_THE_NODES} ({foreign.removeprefix('prefect.').partition('.')[0]})"
    own_work = any(
        v == "own" and (i.startswith(_FLOW_RUN) or i.startswith("prefect.worker."))
        for i, v in zip(ids, verdicts, strict=True)
    )
    if not own_work:
        return NOT_ABOUT_OWN_WORK
    return _task_run_event_refusal(event, view)


def task_run_ids(event: dict[str, Any] | None) -> list[str]:
    """The task runs an event names (canonical ids; a spelling that is not one is refused elsewhere)."""
    ids = resource_ids(event) if event is not None else None
    found = [canonical_uuid_or_none(i.removeprefix(_TASK_RUN)) for i in ids or [] if i.startswith(_TASK_RUN)]
    return [i for i in found if i is not None]


_TASK_RUN = "prefect.task-run."
#: What Prefect's task-run recorder would take from a task-run event's payload over the event's own
#: resources (``**payload["task_run"]`` after ``id`` and ``flow_run_id``): the honest engine never sends them.
_RECORDER_OVERRIDES = frozenset({"id", "flow_run_id"})


def _task_run_event_refusal(event: dict[str, Any], view: NodeView) -> str | None:
    """A task-run event records a task run in Prefect (its task-run recorder acts on the event *name*):
    it must be about one task run, under exactly one flow run in the role ``flow-run`` (the recorder's
    parent), and its payload may not re-point the record at another task run or flow run."""
    resource_id = event["resource"].get("prefect.resource.id")
    if not event["event"].startswith("prefect.task-run") and not resource_id.startswith(_TASK_RUN):
        return None
    if not resource_id.startswith(_TASK_RUN):
        return "task-run event not about a task run"
    parents = [r for r in event.get("related", []) if r.get("prefect.resource.role") == "flow-run"]
    if len(parents) != 1 or flow_run_of(str(parents[0].get("prefect.resource.id"))) not in view.runs:
        return "task-run event must name its own flow run exactly once (role flow-run)"
    return _payload_refusal(event.get("payload", {}), view)


def _payload_refusal(payload: Any, view: NodeView) -> str | None:
    if not isinstance(payload, dict):
        return NOT_AN_EVENT
    task_run = payload.get("task_run", {})
    if not isinstance(task_run, dict) or _RECORDER_OVERRIDES & set(task_run):
        return "task-run event payload names its task run or flow run itself"
    for key in ("validated_state", "initial_state"):
        state = payload.get(key)
        details = state.get("state_details") if isinstance(state, dict) else None
        if details is None:
            continue
        if not isinstance(details, dict) or {"flow_run_id", "task_run_id"} & set(details):
            return "task-run event state names its task run or flow run itself"
        child = details.get("child_flow_run_id")
        if child is not None and canonical_uuid_or_none(child) not in view.runs:
            return f"{NOT_THE_NODES} (child flow run)"
    return None


def visible(text: str, view: NodeView, *, queue: str, tasks: TaskCheck) -> bool:
    """An ``events/out`` message may reach the node: control messages, and events about its own runs
    that name no other node's run, worker or queue."""
    message = json_object(text)
    if message is None:
        return False
    if message.get("type") != "event":
        return True  # the subscription's control messages (auth_success, ...)
    event = message.get("event")
    ids = resource_ids(event) if isinstance(event, dict) else None
    if not ids:
        return False
    own_run = False
    for rid in ids:
        verdict = _verdict(rid, view, queue=queue, pool_ids=set(), tasks=tasks)
        kind = rid.removeprefix("prefect.").partition(".")[0]
        if kind in ("flow-run", "task-run", "worker", "work-queue") and verdict == "foreign":
            return False
        own_run = own_run or (kind == "flow-run" and verdict == "own")
    return own_run


def _never(_task_run_id: str) -> bool:
    return False


def narrowed_filter(given: Any) -> dict[str, Any]:
    """An ``events/out`` subscription filter whose resources are flow runs, whatever was asked.

    Not the node's runs by id: the filter is fixed when the subscription opens (a worker opens it at
    start, before it has any run), so a list of ids would go stale. Each event is instead checked against
    the node's runs *as they are now* on its way out (:func:`visible`).
    """
    flt: dict[str, Any] = given if isinstance(given, dict) else {}
    flt["any_resource"] = {"id_prefix": [_FLOW_RUN]}
    return flt
