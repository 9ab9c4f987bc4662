"""What a node may say about its own flow run when it changes it (SPEC C3, I; issue 18): the state it
proposes (``set_state``) and the labels its worker gives the run. Rules over the request body; the gateway
supplies what it knows (the run's parent task run, the GPU pool's id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from cyxwiz.gateway.events import worker_name
from cyxwiz.gateway.ids import canonical_uuid_or_none

#: What Prefect's orchestration takes from a proposed state's ``data`` to make the run's result artifact
#: (``Artifact.from_result``): a key there would put an artifact under any key, outside the node's namespace.
RESULT_ARTIFACT_FIELDS = frozenset({"artifact_key", "artifact_type", "artifact_description"})


def state_refusal(request: dict[str, Any], run_id: str, *, parent: str | None = None) -> str | None:
    """A state the node proposes for its own run names no other run or task run and makes no artifact
    under a key of its choosing (issue 18; C3). The engine's own states name at most the run itself, and
    the worker's Cancelled state (a copy of the current one) the run's own parent task run ``parent``."""
    state = request.get("state")
    if not isinstance(state, dict):
        return None  # Prefect refuses it (422)
    data = state.get("data")
    if isinstance(data, dict) and RESULT_ARTIFACT_FIELDS & set(data):
        return "state data may not name an artifact (key, type or description)"
    details = state.get("state_details") or {}
    if not isinstance(details, dict):
        return None
    if details.get("flow_run_id") is not None and canonical_uuid_or_none(details["flow_run_id"]) != run_id:
        return "state names another flow run"
    named = [k for k in ("task_run_id", "child_flow_run_id") if details.get(k) is not None]
    if (
        named[:1] == ["task_run_id"]
        and parent is not None
        and canonical_uuid_or_none(details["task_run_id"]) == parent
    ):
        named = named[1:]  # the run's own parent, which Prefect's server sets there itself
    return f"state names {named[0]}" if named else None


async def label_refusal(
    labels: dict[str, Any], *, queue: str, pool: str, our_pool_id: Callable[[str], Awaitable[bool]]
) -> str | None:
    """Labels a node's worker gives its run name that worker and the GPU pool (Prefect's system labels);
    no other ``prefect.*`` label, and none naming another worker or pool (C3)."""
    own: dict[str, Callable[[Any], bool]] = {
        "prefect.worker.name": lambda v: v == worker_name(queue),
        "prefect.worker.type": lambda v: isinstance(v, str),
        "prefect.work-pool.name": lambda v: v == pool,
    }
    for key, value in labels.items():
        if key == "prefect.work-pool.id":
            ident = canonical_uuid_or_none(value)
            if ident is None or not await our_pool_id(ident):
                return "label names another work pool"
        elif key.startswith("prefect."):
            check = own.get(key)
            if check is None or not check(value):
                return f"label {key!r} is not the node's to set"
    return None
