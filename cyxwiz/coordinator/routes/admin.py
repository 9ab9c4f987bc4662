"""Admin: manage nodes (drain, ban, revoke), read all jobs, configure the system (C1, H2)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request

from cyxwiz.audit import events as ev
from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.auth import node_payload
from cyxwiz.coordinator.schemas import AdminActionRequest, ConfigRequest
from cyxwiz.errors import ConflictError, ValidationError

router = APIRouter(tags=["admin"])

_STATUS = {"drain": "draining", "ban": "banned", "activate": "active", "revoke": "revoked"}


@router.get("/v1/admin/nodes")
def admin_nodes(
    request: Request, access: Annotated[Access, Depends(Allow("admin.nodes"))]
) -> list[dict[str, Any]]:
    ctx = coordinator(request)
    ctx.record(
        ev.admin_action(
            actor_id=access.who.principal_id, action="nodes.list", target="nodes", ip_address=access.who.ip
        )
    )
    return [node_payload(n) for n in ctx.store.list_nodes()]


@router.post("/v1/admin/nodes/{node_id}/{action}")
def admin_node_action(
    node_id: str,
    action: Literal["drain", "ban", "activate", "revoke"],
    body: AdminActionRequest,
    request: Request,
    access: Annotated[Access, Depends(Allow("admin.node_action"))],
) -> dict[str, Any]:
    ctx, caller = coordinator(request), access.who
    node = ctx.store.node(node_id)
    new_status = _STATUS[action]
    if action == "revoke":
        if ctx.revoker is None:
            raise ConflictError("no CA configured for revocation", field="action")
        ctx.revoker(node, body.reason)
    if action in ("ban", "revoke"):
        ctx.store.revoke_sessions_of(node_id)
        if ctx.close_peer is not None:
            # Its earlier (renewed-from, unexpired) certificates are the node too: their connections end.
            for peer_id in ctx.store.peer_ids_of(node_id):
                ctx.close_peer(peer_id)
        ctx.record(
            ev.revocation(actor_id=caller.principal_id, kind="node", target=node_id, reason=body.reason)
        )
    ctx.record(
        ev.admin_action(
            actor_id=caller.principal_id, action=f"node.{action}", target=f"node:{node_id}",
            reason=body.reason, ip_address=caller.ip,
        )
    )  # fmt: skip
    ctx.record(
        ev.configuration_change(
            actor_id=caller.principal_id,
            setting=f"node:{node_id}:status",
            changes={"status": (node.status, new_status)},
            ip_address=caller.ip,
        )
    )
    return node_payload(ctx.store.set_node_status(node_id, new_status))


@router.get("/v1/admin/jobs")
def admin_jobs(
    request: Request, access: Annotated[Access, Depends(Allow("admin.jobs"))]
) -> list[dict[str, Any]]:
    ctx = coordinator(request)
    ctx.record(
        ev.admin_action(
            actor_id=access.who.principal_id, action="jobs.list", target="jobs", ip_address=access.who.ip
        )
    )
    return [j.public() for j in ctx.store.list_jobs()]


@router.get("/v1/admin/config")
def admin_config(
    request: Request, access: Annotated[Access, Depends(Allow("admin.config.read"))]
) -> dict[str, Any]:
    ctx = coordinator(request)
    ctx.record(
        ev.admin_action(
            actor_id=access.who.principal_id, action="config.read", target="config", ip_address=access.who.ip
        )
    )
    return ctx.store.all_config()


@router.put("/v1/admin/config/{key}")
def admin_set_config(
    key: str,
    body: ConfigRequest,
    request: Request,
    access: Annotated[Access, Depends(Allow("admin.config.write"))],
) -> dict[str, Any]:
    ctx, caller = coordinator(request), access.who
    if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,127}", key):
        raise ValidationError("config keys are lower-case words", field="key")
    old = ctx.store.set_config(key, body.value)
    ctx.record(
        ev.configuration_change(
            actor_id=caller.principal_id,
            setting=key,
            changes={"value": (old, body.value)},
            ip_address=caller.ip,
        )
    )
    return {"key": key, "old": old, "new": body.value}
