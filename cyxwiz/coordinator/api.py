"""The coordinator HTTP API (FastAPI, OpenAPI at /openapi.json): nodes, users, admins (SPEC B, C, I).

Identity rules: a node is its certificate (never a body field: a body naming another node is refused);
users and admins are their session tokens; a job is visible to its owner, its assigned node and admins.
Routes live in :mod:`cyxwiz.coordinator.routes` by resource; each applies its rule of the one table
(:data:`cyxwiz.authz.RULES`) as a dependency (:mod:`cyxwiz.coordinator.access`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from cyxwiz.audit import AuditSink
from cyxwiz.coordinator.access import Access, Allow, Coordinator, NodeRevoker
from cyxwiz.coordinator.auth import Authenticator, credential_admission
from cyxwiz.coordinator.hooks import CoordinatorHooks
from cyxwiz.coordinator.limits import Admit, BodyRoute, GuardMiddleware, RateLimiter
from cyxwiz.coordinator.presigned import presigned_gate
from cyxwiz.coordinator.problems import install_handlers, send_problem
from cyxwiz.coordinator.renewal import CertificateIssuer
from cyxwiz.coordinator.routes import admin, archive, datasets, jobs, nodes, tokens, wallet
from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.tokens.issuer import TokenIssuer
from cyxwiz.tokens.verifier import TokenVerifier

__all__ = ["NodeRevoker", "create_app"]


def create_app(
    *,
    store: CoordinatorStore,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    hooks: CoordinatorHooks,
    audit: AuditSink | None = None,
    revoker: NodeRevoker | None = None,
    identity_rate: tuple[float, int] = (20.0, 40),
    ip_rate: tuple[float, int] = (100.0, 200),
    max_body: int = 1 << 20,
    close_peer: Callable[[str], None] | None = None,
    renewer: CertificateIssuer | None = None,
) -> GuardMiddleware:
    """The coordinator ASGI app (FastAPI inside body/IP guards). Serve it with :class:`MTLSServer`."""
    auth = Authenticator(
        store=store,
        verifier=verifier,
        limiter=RateLimiter(rate=identity_rate[0], burst=identity_rate[1]),
        audit=audit,
    )
    app = FastAPI(title="cyxwiz coordinator", version="1", docs_url=None, redoc_url=None)
    app.state.coordinator = Coordinator(
        store=store,
        issuer=issuer,
        verifier=verifier,
        hooks=hooks,
        auth=auth,
        audit=audit,
        revoker=revoker,
        close_peer=close_peer,
        renewer=renewer,
    )
    install_handlers(app, audit=audit)
    for module in (nodes, tokens, jobs, datasets, archive, wallet, admin):
        app.include_router(module.router)

    # Since when this coordinator takes heartbeats: a node's beat is evidence of its loss only over time
    # the coordinator was up to receive it (the lifecycle asks, tasks/coordinator_health.py; issue 21).
    started_at = dt.datetime.now(dt.UTC).isoformat()

    @app.get("/v1/health", tags=["meta"])
    def health(access: Annotated[Access, Depends(Allow("meta.health"))]) -> dict[str, str]:
        # Permissive development hooks say so here too, so nobody mistakes a --dev coordinator for one.
        warning = getattr(hooks, "dev_warning", None)
        if warning:
            return {"status": "ok", "mode": "dev", "warning": str(warning), "started_at": started_at}
        return {"status": "ok", "mode": "production", "started_at": started_at}

    async def refuse(scope: dict[str, Any], send: Any, exc: Exception) -> None:
        await send_problem(scope, send, exc, audit=audit)

    # The FastAPI app stays reachable as ``.app`` (OpenAPI: ``create_app(...).app.openapi()``).
    return GuardMiddleware(
        app,
        ip_limiter=RateLimiter(rate=ip_rate[0], burst=ip_rate[1]),
        max_body=max_body,
        refuse=refuse,
        routes=body_routes(max_body, objects_gate=presigned_gate(store)),
        admit=credential_admission(verifier),
    )


def body_routes(max_body: int, *, objects_gate: Admit | None = None) -> tuple[BodyRoute, ...]:
    """Body caps by route (SPEC I). Only the presigned object store takes large bodies, and it checks
    the URL's signature before reading one; the JSON API takes small ones, and only from a caller whose
    credential verified first. A refresh token travels in its body: that body is tiny. A job's object URL
    is dead once the job or its node is (:mod:`cyxwiz.coordinator.presigned`)."""
    return (
        BodyRoute(prefix="/objects/", cap=max_body, stream=True, gate=objects_gate),
        BodyRoute(prefix="/v1/tokens/refresh", cap=16 << 10, admit=False),
        BodyRoute(prefix="/", cap=min(max_body, API_BODY_CAP)),
    )


#: The JSON API's body cap: a job spec with its model definition is the largest body it takes.
API_BODY_CAP = 1 << 20
