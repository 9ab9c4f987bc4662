"""Run the gateway: :class:`~cyxwiz.gateway.proxy.Gateway` behind the mTLS server with body/IP guards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cyxwiz.audit import AuditSink
from cyxwiz.coordinator.limits import BodyRoute, GuardMiddleware, RateLimiter, RefusalCap
from cyxwiz.coordinator.problems import send_problem
from cyxwiz.gateway.proxy import Gateway
from cyxwiz.gateway.standing import RevocationWatch, Standing
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.reload import PeerPolicy, ServerTLS
from cyxwiz.transport.server import MTLSServer


def build_gateway(
    *,
    cert: Path,
    key: Path,
    trust_bundle: Path,
    crl: Path | None,
    upstream: str,
    pool: str,
    verifier: TokenVerifier,
    audit: AuditSink | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    queue_for: Callable[[str], str] = lambda node_id: node_id,
    upstream_auth: str | None = None,
    require_job_token: bool = True,
    max_body: int = 8 << 20,
    ip_rate: tuple[float, int] = (200.0, 400),
    node_rate: tuple[float, int] = (50.0, 200),
    standing: Standing | None = None,
    revocation_interval: float = 0.5,
    refusals_per_minute: int = 120,
    policy: PeerPolicy | None = None,
) -> tuple[MTLSServer, Gateway]:
    """The gateway listener (client certificates required, CRL hot reload) and its proxy app."""
    # A refusal flood (a hostile node hammering forged events) cannot fill the audit log.
    audit = RefusalCap(audit, per_minute=refusals_per_minute) if audit is not None else None
    gateway = Gateway(
        upstream=upstream,
        pool=pool,
        verifier=verifier,
        audit=audit,
        queue_for=queue_for,
        upstream_auth=upstream_auth,
        require_job_token=require_job_token,
        node_rate=node_rate,
        standing=standing,
    )

    async def refuse(scope: dict[str, object], send: object, exc: Exception) -> None:
        await send_problem(scope, send, exc, audit=audit)

    # The gateway authenticates each request (certificate, session token, standing) before it reads a
    # body byte, so the guard only counts bodies against their route's cap (SPEC I).
    guarded = GuardMiddleware(
        gateway,
        ip_limiter=RateLimiter(rate=ip_rate[0], burst=ip_rate[1]),
        max_body=max_body,
        refuse=refuse,
        routes=(
            BodyRoute(prefix="/api/logs", cap=max_body, stream=True),
            BodyRoute(prefix="/api/artifacts", cap=max_body, stream=True),
            BodyRoute(prefix="/", cap=min(max_body, 1 << 20), stream=True),
        ),
    )
    tls = ServerTLS(
        cert=cert,
        key=key,
        trust_bundle=trust_bundle,
        crl=crl,
        require_client_cert=True,
        audit=audit,
        policy=policy,
    )
    if standing is not None:
        gateway.watch = RevocationWatch(
            standing=standing,
            live=gateway.live,
            close_peers=tls.connections.close_where,
            audit=audit,
            interval=revocation_interval,
        )
    return MTLSServer(app=guarded, tls=tls, host=host, port=port, audit=audit), gateway
