"""Nodes: register (the certificate is the identity) and heartbeat (SPEC A5, C1, C2)."""

from __future__ import annotations

from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Depends, Request

from cyxwiz.audit import events as ev
from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.schemas import HeartbeatRequest, RegisterRequest, RenewRequest
from cyxwiz.errors import AuthorizationError, ConflictError, CyxwizError, ValidationError
from cyxwiz.issuer.policy import RenewalRequest
from cyxwiz.ledger.payout import (
    RenewalLinkError,
    SignedWalletStatement,
    StaleWalletStatementError,
    WalletStatementError,
)
from cyxwiz.pki.peerid import peer_id
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
    statement = _wallet_statement(ctx, body, peer, ip)
    try:
        node = ctx.store.register_node(
            peer_id=peer.peer_id,
            subject=peer.subject,
            cert_serial=format(peer.serial, "x"),
            hardware=body.hardware.model_dump(),
            wallet=statement.statement.wallet if statement else None,
            certificate=peer.certificate,
            wallet_statement=statement,
        )
    except StaleWalletStatementError as exc:
        raise _refused_wallet(ctx, peer, ip, exc) from None
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


def _wallet_statement(
    ctx: Any, body: RegisterRequest, peer: PeerIdentity, ip: str | None
) -> SignedWalletStatement | None:
    """The payout wallet as the node's own certificate key signed it (issue 17; F1, A5): a wallet only
    the coordinator vouches for is refused, as is a statement another key signed or one dated ahead."""
    if body.wallet_statement is None:
        if body.wallet is not None:
            raise ValidationError(
                "a payout wallet needs the statement the node's certificate key signed",
                field="wallet_statement",
                rule="F1",
            )
        return None
    signed = SignedWalletStatement.from_dict(body.wallet_statement)
    if body.wallet is not None and _payout_wallet(body.wallet) != signed.statement.wallet:
        raise ValidationError("wallet differs from the signed statement's", field="wallet", rule="F1")
    signed.check_fresh()
    try:
        signed.verify(peer.certificate)
    except WalletStatementError as exc:
        raise _refused_wallet(ctx, peer, ip, exc) from None
    said = signed.statement
    ctx.record(
        _wallet_event(peer, ip, allowed=True, reason=f"wallet {said.wallet} issued at {said.issued_at}")
    )
    return signed


def _refused_wallet(ctx: Any, peer: PeerIdentity, ip: str | None, exc: CyxwizError) -> CyxwizError:
    ctx.record(_wallet_event(peer, ip, allowed=False, reason=f"{exc.code}: {exc.message}"))
    exc.audited = True  # type: ignore[attr-defined]
    return exc


def _wallet_event(peer: PeerIdentity, ip: str | None, *, allowed: bool, reason: str) -> ev.SecurityEvent:
    return ev.access_decision(
        actor_id=peer.peer_id, actor_type=ev.ActorType.NODE, resource=f"node:{peer.peer_id}",
        action="wallet.bind", allowed=allowed, reason=reason, ip_address=ip,
    )  # fmt: skip


def _renewal_request(ctx: Any, body: RenewRequest, old: PeerIdentity, ip: str | None) -> RenewalRequest:
    """What the issuer service is asked to sign: the CSR, the node's current certificate, and the current
    key's signed "the new key is mine" (issue 17; F1, A7) — without the link a proof signed by the old key
    could not be paid to the wallet the new key states. A link the old key did not sign for exactly this
    renewal is refused (by the issuer, which checks it again whatever this process says) and audited."""
    request = RenewalRequest.build(certificate=old.certificate, csr_pem=body.csr, link=body.renewal_link)
    try:
        link = request.link.verify()
        public = request.csr.public_key()
        new = peer_id(public) if isinstance(public, Ed25519PublicKey) else None  # else the issuer says why
        if link.old_peer_id != old.peer_id or new not in (None, link.new_peer_id):
            raise RenewalLinkError(
                "the renewal link names other keys than this renewal's", field="renewal_link", rule="A7"
            )
    except RenewalLinkError as exc:
        raise _refused_renewal(ctx, old, ip, exc) from None
    return request


def _refused_renewal(ctx: Any, old: PeerIdentity, ip: str | None, exc: CyxwizError) -> CyxwizError:
    ctx.record(
        ev.access_decision(
            actor_id=old.peer_id, actor_type=ev.ActorType.NODE, resource=f"node:{old.peer_id}",
            action="certificate.renew", allowed=False, reason=f"{exc.code}: {exc.message}", ip_address=ip,
        )
    )  # fmt: skip
    exc.audited = True  # type: ignore[attr-defined]
    return exc


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
        raise ConflictError("no issuer service configured for renewal", field="csr")
    renewal = _renewal_request(ctx, body, caller.peer, caller.ip)
    try:
        cert = ctx.renewer.renew(renewal)
    except RenewalLinkError as exc:  # the issuer's own check of the link (its issued_at, its keys)
        raise _refused_renewal(ctx, caller.peer, caller.ip, exc) from None
    new = PeerIdentity.from_certificate(cert)
    statement = None
    if body.wallet_statement is not None:  # checked before anything is stored: refused, nothing renewed
        statement = SignedWalletStatement.from_dict(body.wallet_statement)
        statement.check_fresh()
        try:
            statement.verify(cert)
        except WalletStatementError as exc:
            raise _refused_wallet(ctx, caller.peer, caller.ip, exc) from None
    node = ctx.store.renew_node(
        caller.node.node_id, peer_id=new.peer_id, cert_serial=format(new.serial, "x"), certificate=cert,
        renewal_link=renewal.link,
    )  # fmt: skip
    if statement is not None:
        try:
            ctx.store.set_wallet_statement(node.node_id, statement)
        except StaleWalletStatementError as exc:  # the renewal stands; the node's newer wallet stays
            _refused_wallet(ctx, new, caller.ip, exc)
        else:
            said = statement.statement
            why = f"wallet {said.wallet} issued at {said.issued_at} (renewal)"
            ctx.record(_wallet_event(new, caller.ip, allowed=True, reason=why))
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
