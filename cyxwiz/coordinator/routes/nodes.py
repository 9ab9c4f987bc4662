"""Nodes: register (the certificate is the identity) and heartbeat (SPEC A5, C1, C2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyxwiz.audit import events as ev
from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.schemas import HeartbeatRequest, RegisterRequest
from cyxwiz.errors import AuthorizationError

router = APIRouter(tags=["nodes"])


@router.post("/v1/nodes/register", response_model=dict[str, Any])
def register(
    body: RegisterRequest, request: Request, access: Annotated[Access, Depends(Allow("nodes.register"))]
) -> dict[str, Any]:
    ctx, peer = coordinator(request), access.peer
    assert peer is not None
    ip = request.client.host if request.client else None
    existing = ctx.store.node_by_peer(peer.peer_id)
    ctx.check_claimed_node(existing, body.node_id, peer, ip)
    if existing is not None and existing.status in ("banned", "revoked"):
        raise AuthorizationError(f"node is {existing.status}", field="node_id", rule="C1")
    node = ctx.store.register_node(
        peer_id=peer.peer_id,
        subject=peer.subject,
        cert_serial=format(peer.serial, "x"),
        hardware=body.hardware.model_dump(),
    )
    ctx.record(
        ev.node_registered(
            node_id=node.node_id,
            peer_id=peer.peer_id,
            cert_subject=peer.subject,
            hardware=body.hardware.model_dump(),
            ip_address=ip,
        )
    )
    tokens = ctx.open_session(node=node, user_id=None, role="node", peer=peer)
    return {"node_id": node.node_id, "peer_id": peer.peer_id, **tokens.model_dump()}


@router.post("/v1/nodes/heartbeat")
def heartbeat(
    body: HeartbeatRequest, request: Request, access: Annotated[Access, Depends(Allow("nodes.heartbeat"))]
) -> dict[str, Any]:
    ctx, caller = coordinator(request), access.who
    assert caller.peer is not None
    ctx.check_claimed_node(caller.node, body.node_id, caller.peer, caller.ip)
    ctx.store.heartbeat(caller.principal_id)
    node = ctx.store.node(caller.principal_id)
    return {"node_id": node.node_id, "status": node.status, "drain": node.status == "draining"}
