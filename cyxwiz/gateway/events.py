"""Prefect event filtering at the gateway (SPEC C3, I): what a node may see and what it may emit.

Pure functions over the JSON the Prefect event websockets carry, given the flow runs the gateway has seen
the node own. Prefect automations act on events, so an event forged about another node's run or worker is
an attempt to steer work that is not the node's; one about another node's run must not be shown either.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any

#: Why an event a node tried to emit was dropped.
NOT_AN_EVENT = "not an event"
NOT_THE_NODES = "event about a resource that is not the node's"


def json_object(text: str) -> dict[str, Any] | None:
    """A websocket text message as a JSON object, or None when it is anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_FLOW_RUN = "prefect.flow-run."


def resource_ids(event: dict[str, Any]) -> list[str]:
    """The event's resource id, then those of its related resources."""
    resource = event.get("resource")
    ids = [str(resource.get("prefect.resource.id", "")) if isinstance(resource, dict) else ""]
    related = event.get("related")
    ids += [
        str(r.get("prefect.resource.id", ""))
        for r in (related if isinstance(related, list) else [])
        if isinstance(r, dict)
    ]
    return ids


def about_runs(event: dict[str, Any], run_ids: Container[str]) -> bool:
    """The event's resource, or one of its related resources, is one of these flow runs."""
    # Looked up in the node's run map as it is: every flow-run event of the pool passes here.
    return any(i.startswith(_FLOW_RUN) and i.removeprefix(_FLOW_RUN) in run_ids for i in resource_ids(event))


def visible(text: str, run_ids: Container[str]) -> bool:
    """An ``events/out`` message may reach the node: control messages, and events about its runs."""
    message = json_object(text)
    if message is None:
        return False
    if message.get("type") != "event":
        return True  # control messages (auth_success, etc.)
    event = message.get("event")
    return isinstance(event, dict) and about_runs(event, run_ids)


def emit_refusal(text: str, run_ids: Container[str], *, queue: str) -> str | None:
    """Why an ``events/in`` message must be dropped, or None when it is about the node's own work.

    Own work: one of its flow runs (as resource or related: task runs name their flow run), or its own
    worker, which the node agent names ``cyxwiz-<queue>``.
    """
    event = json_object(text)
    if event is None:
        return NOT_AN_EVENT
    if event.get("type") == "auth" and set(event) <= {"type", "token"}:
        return None  # the client's opening message; the gateway swaps in its own credential
    if about_runs(event, run_ids):
        return None
    rid = resource_ids(event)[0]
    if rid.startswith("prefect.worker.") and rid.endswith(f".cyxwiz-{queue}"):
        return None
    return NOT_THE_NODES


def narrowed_filter(given: Any) -> dict[str, Any]:
    """An ``events/out`` subscription filter whose resources are flow runs, whatever was asked.

    Not the node's runs by id: the filter is fixed when the subscription opens (a worker opens it at
    start, before it has any run), so a list of ids would go stale. Each event is instead checked against
    the node's runs *as they are now* on its way out (:func:`visible`).
    """
    flt: dict[str, Any] = given if isinstance(given, dict) else {}
    flt["any_resource"] = {"id_prefix": [_FLOW_RUN]}
    return flt
