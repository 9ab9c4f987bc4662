"""Prefect's worker channel (``/work_pools/{pool}/workers/connect``) as a node may speak it (SPEC C3, I).

The channel's frames steer the pool: ``worker.hello.v1`` names the worker and the work queues it serves
(an empty list means *every* queue of the pool) and may create or re-template the pool; heartbeats name the
worker; cleanup frames act on teardown messages the server delivered. A node may only speak as its own
worker, for its own queue, and only about cleanup messages delivered to it; everything else is refused.
"""

from __future__ import annotations

from typing import Any

from cyxwiz.gateway.events import json_object, worker_name
from cyxwiz.gateway.ids import canonical_uuid_or_none
from cyxwiz.gateway.model import NodeView

_CLEANUP_OPS = frozenset({"cleanup.ack.v1", "cleanup.release.v1", "cleanup.renew.v1"})


def client_frame_refusal(text: str, view: NodeView, *, queue: str) -> str | None:
    """Why a frame the node sends on the worker channel is refused, or None."""
    frame = json_object(text)
    if frame is None:
        return "not a JSON object"
    kind = frame.get("type")
    payload = frame.get("payload")
    if kind == "auth":
        return None if set(frame) <= {"type", "token"} else "auth frame with extra fields"
    if not isinstance(payload, dict):
        return "frame without a payload"
    if kind == "worker.hello.v1":
        return _hello_refusal(payload, queue)
    if kind == "worker.heartbeat.v1":
        ok = payload.get("worker_name") == worker_name(queue)
        return None if ok else "heartbeat for another worker"
    message = canonical_uuid_or_none(payload.get("message_id"))
    known = kind in _CLEANUP_OPS and message is not None and message in view.cleanup_messages
    return None if known else f"frame {kind!r} is not one this node may send (or names a foreign message)"


def _hello_refusal(payload: dict[str, Any], queue: str) -> str | None:
    if payload.get("worker_name") != worker_name(queue):
        return "worker.hello names another worker"
    if payload.get("work_queue_names") != [queue]:
        # [] would mean every queue of the pool: only the node's own queue is its to serve.
        return "worker.hello must name exactly the node's own work queue"
    return None


def rewritten_client_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """A node may not create or re-template the pool: rewritten, not refused, because Prefect's worker
    asks for it by default and the pool exists anyway."""
    payload = frame.get("payload")
    if frame.get("type") == "worker.hello.v1" and isinstance(payload, dict):
        payload["create_pool_if_not_found"] = False
        payload["default_base_job_template"] = {}
    return frame


def server_frame_visible(text: str, view: NodeView) -> bool:
    """A frame from the server may reach the node: cleanup messages only about the node's own runs
    (remembered so the node may acknowledge them); everything else as is."""
    frame = json_object(text)
    if frame is None or frame.get("type") != "cleanup.message.v1":
        return True
    payload = frame.get("payload")
    target = payload.get("target") if isinstance(payload, dict) else None
    run = canonical_uuid_or_none(target.get("flow_run_id")) if isinstance(target, dict) else None
    message = canonical_uuid_or_none(payload.get("message_id")) if isinstance(payload, dict) else None
    if run is None or message is None or run not in view.runs:
        return False
    view.cleanup_messages.add(message)
    return True
