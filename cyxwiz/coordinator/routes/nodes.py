"""Nodes: register (the certificate is the identity) and heartbeat (SPEC A5, C1, C2)."""

from __future__ import annotations

from typing import Annotated, Any

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Depends, Request

from cyxwiz.audit import events as ev
from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.schemas import HeartbeatRequest, RegisterRequest, RenewRequest
from cyxwiz.errors import AuthorizationError, ConflictError, ValidationError
from cyxwiz.transport.identity import PeerIdentity

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
    if body.peer_id is not None and body.peer_id != peer.peer_id:
        ctx.check_claimed_node(None, body.peer_id, peer, ip)  # audited and refused as a foreign node_id
    if existing is not None and existing.status in ("banned", "revoked"):
        raise AuthorizationError(f"node is {existing.status}", field="node_id", rule="C1")
    node = ctx.store.register_node(
        peer_id=peer.peer_id,
        subject=peer.subject,
        cert_serial=format(peer.serial, "x"),
        hardware=body.hardware.model_dump(),
        wallet=_payout_wallet(body.wallet),
        certificate=peer.certificate,
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


def _payout_wallet(value: str | None) -> str | None:
    """The wallet releases pay, bound to the caller's PeerID only (F1, C2); a public key, nothing secret."""
    if value is None:
        return None
    from solders.pubkey import Pubkey

    try:
        return str(Pubkey.from_string(value))
    except ValueError:
        raise ValidationError("not a base58 public key", field="wallet", rule="F1") from None


@router.post("/v1/nodes/heartbeat")
def heartbeat(
    body: HeartbeatRequest, request: Request, access: Annotated[Access, Depends(Allow("nodes.heartbeat"))]
) -> dict[str, Any]:
    ctx, caller = coordinator(request), access.who
    assert caller.peer is not None
    ctx.check_claimed_node(caller.node, body.node_id, caller.peer, caller.ip)
    ctx.store.heartbeat(caller.principal_id)
    ctx.store.record_certificate(caller.principal_id, caller.peer.certificate)
    node = ctx.store.node(caller.principal_id)
    return {"node_id": node.node_id, "status": node.status, "drain": node.status == "draining"}


@router.post("/v1/nodes/renew")
def renew(
    body: RenewRequest, request: Request, access: Annotated[Access, Depends(Allow("nodes.renew"))]
) -> dict[str, Any]:
    """A new certificate for the node's new key, over its current identity (A7); a session bound to it."""
    ctx, caller = coordinator(request), access.who
    assert caller.peer is not None and caller.node is not None
    if ctx.renewer is None:
        raise ConflictError("no CA configured for renewal", field="csr")
    cert = ctx.renewer.sign(body.csr, current=caller.peer)
    new = PeerIdentity.from_certificate(cert)
    node = ctx.store.renew_node(
        caller.node.node_id, peer_id=new.peer_id, cert_serial=format(new.serial, "x"), certificate=cert
    )
    ctx.record(
        ev.make_event(
            event_type=ev.EventType.AUTHENTICATION,
            actor_id=node.node_id,
            actor_type=ev.ActorType.NODE,
            resource=f"node:{node.node_id}",
            action="certificate.renew",
            outcome=ev.Outcome.SUCCESS,
            ip_address=caller.ip,
            details={
                "old_peer_id": caller.peer.peer_id,
                "peer_id": new.peer_id,
                "not_after": cert.not_valid_after_utc.isoformat(),
            },
        )
    )
    tokens = ctx.open_session(node=node, user_id=None, role="node", peer=new)
    return {
        "node_id": node.node_id,
        "peer_id": new.peer_id,
        "certificate": cert.public_bytes(Encoding.PEM).decode(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        **tokens.model_dump(),
    }
