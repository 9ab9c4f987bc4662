"""Tokens: user login by certificate, refresh rotation (B5), a node's job token for an assigned job (B1)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyxwiz.audit import events as ev
from cyxwiz.authz.roles import permissions_for
from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.schemas import RefreshRequest, TokenPair
from cyxwiz.tokens.errors import RefreshReuseError
from cyxwiz.tokens.kinds import TokenKind

router = APIRouter(tags=["tokens"])


@router.post("/v1/auth/login", response_model=TokenPair, tags=["users"])
def login(request: Request, access: Annotated[Access, Depends(Allow("tokens.login"))]) -> TokenPair:
    from cyxwiz.pki.certs import common_name

    peer = access.peer
    assert peer is not None
    user_id = common_name(peer.certificate) or peer.peer_id
    # The session remembers the certificate it was opened with: revoking it kills the family (B5).
    return coordinator(request).open_session(node=None, user_id=user_id, role="user", peer=peer)


@router.post("/v1/tokens/refresh", response_model=TokenPair)
def refresh(
    body: RefreshRequest, request: Request, access: Annotated[Access, Depends(Allow("tokens.refresh"))]
) -> TokenPair:
    ctx, peer = coordinator(request), access.peer
    token = ctx.verifier.verify(
        body.refresh_token,
        kind=TokenKind.REFRESH,
        audience=ctx.issuer.issuer,
        peer_cert=peer.certificate if peer else None,
    )
    access.rule.check_role_scope(token.role, ())
    assert token.session_id is not None
    if not ctx.store.consume_refresh(jti=token.jti, session_id=token.session_id):
        # Reuse of a rotated refresh token: someone holds a copy. Kill the whole family (B5).
        ctx.store.revoke_session(token.session_id)
        ctx.record(
            ev.revocation(
                actor_id="coordinator",
                actor_type=ev.ActorType.SERVICE,
                kind="token-family",
                target=token.session_id,
                reason="refresh token reuse",
            )
        )
        raise RefreshReuseError(
            "refresh token already used; session revoked", field="refresh_token", rule="B5"
        )
    role, session_id = token.role, token.session_id
    cert = peer.certificate if peer is not None else None
    node_id, user_id = token.node_id, token.user_id
    # The scopes the family was opened with, never the role's defaults: a narrowed session stays narrow.
    scopes = sorted(token.scopes & {p.value for p in permissions_for(role)})
    session = ctx.issuer.session(
        node_id=node_id, user_id=user_id, role=role, session_id=session_id, cert=cert, scopes=scopes
    )
    new_refresh = ctx.issuer.refresh(
        session_id=session_id, node_id=node_id, user_id=user_id, role=role, cert=cert, scopes=scopes
    )
    ctx.store.add_refresh(jti=new_refresh.jti, session_id=session_id, expires_at=new_refresh.expires_at)
    return TokenPair(
        session_token=session.token,
        refresh_token=new_refresh.token,
        session_id=session_id,
        expires_at=session.expires_at.isoformat(),
    )


@router.get("/v1/jobs/{job_id}/token", tags=["nodes"])
def job_token(
    job_id: str, request: Request, access: Annotated[Access, Depends(Allow("tokens.job"))]
) -> dict[str, Any]:
    ctx, caller, job = coordinator(request), access.who, access.job
    assert caller.peer is not None and job is not None
    issued = ctx.issuer.job(
        node_id=caller.principal_id,
        job_id=job_id,
        cert=caller.peer.certificate,
        duration=timedelta(seconds=job.duration_s),
    )
    # Recorded under the job's assignment: a re-dispatch or the job's end revokes it (issue 21, C3).
    ctx.store.record_grant(issued.jti, job=job, kind="job-token")
    if job.status == "assigned":
        ctx.store.update_job(job_id, status="running")
    return {"job_id": job_id, "job_token": issued.token, "expires_at": issued.expires_at.isoformat()}
