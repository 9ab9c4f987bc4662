"""The coordinator HTTP API (FastAPI, OpenAPI at /openapi.json): nodes, users, admins (SPEC B, C, I).

Identity rules: a node is its certificate (never a body field: a body naming another node is refused);
users and admins are their session tokens; a job is visible to its owner, its assigned node and admins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.authz.roles import Permission
from cyxwiz.coordinator.auth import Authenticator, Caller, node_payload
from cyxwiz.coordinator.hooks import CoordinatorHooks
from cyxwiz.coordinator.limits import GuardMiddleware, RateLimiter
from cyxwiz.coordinator.problems import install_handlers, send_problem
from cyxwiz.coordinator.store import CoordinatorStore, JobRecord, NodeRecord
from cyxwiz.errors import AuthorizationError, ConflictError, ValidationError
from cyxwiz.tokens.errors import RefreshReuseError
from cyxwiz.tokens.issuer import TokenIssuer, new_id
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.identity import PeerIdentity

_OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){0,7}")

NodeRevoker = Callable[[NodeRecord, str], None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hardware(_Strict):
    gpus: int = Field(0, ge=0, le=64)
    gpu_model: str | None = Field(None, max_length=128)
    gpu_memory_mb: int = Field(0, ge=0, le=10_000_000)
    cpu_cores: int = Field(1, ge=1, le=4096)
    memory_mb: int = Field(1024, ge=1, le=100_000_000)


class RegisterRequest(_Strict):
    hardware: Hardware
    #: Optional, for clients that send it: must match the node the certificate identifies (C2).
    node_id: str | None = Field(None, max_length=64)


class HeartbeatRequest(_Strict):
    node_id: str | None = Field(None, max_length=64)
    load: dict[str, float] = Field(default_factory=dict, max_length=32)


class RefreshRequest(_Strict):
    refresh_token: str = Field(max_length=8192)


class ProgressRequest(_Strict):
    step: int = Field(ge=0)
    total: int = Field(ge=1)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)


class CompletionRequest(_Strict):
    proof: dict[str, JsonValue]


class UrlRequest(_Strict):
    kind: Literal["input", "output"]
    name: str = Field(max_length=512)
    method: Literal["GET", "PUT"] = "GET"
    #: An output PUT URL is bound to the content it may carry (D3): hash and size are required for PUT.
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(None, ge=0, le=1 << 40)


class SubmitRequest(_Strict):
    spec: dict[str, JsonValue]


class AdminActionRequest(_Strict):
    reason: str = Field("unspecified", max_length=256)


class ConfigRequest(_Strict):
    value: JsonValue


class TokenPair(BaseModel):
    session_token: str
    refresh_token: str
    session_id: str
    expires_at: str


def create_app(  # noqa: PLR0915 (one closure holds the route table)
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
) -> GuardMiddleware:
    """The coordinator ASGI app (FastAPI inside body/IP guards). Serve it with :class:`MTLSServer`."""
    auth = Authenticator(
        store=store,
        verifier=verifier,
        limiter=RateLimiter(rate=identity_rate[0], burst=identity_rate[1]),
        audit=audit,
    )
    app = FastAPI(title="cyxwiz coordinator", version="1", docs_url=None, redoc_url=None)
    install_handlers(app, audit=audit)

    def record(event: ev.SecurityEvent) -> None:
        if audit is not None:
            audit.record(event)

    def open_session(
        *, node: NodeRecord | None, user_id: str | None, role: str, peer: PeerIdentity | None
    ) -> TokenPair:
        session_id = new_id()
        principal = node.node_id if node is not None else str(user_id)
        store.create_session(
            session_id=session_id, principal_kind="node" if node else "user", principal_id=principal
        )
        cert = peer.certificate if peer is not None else None
        node_id = node.node_id if node is not None else None
        session = issuer.session(
            node_id=node_id, user_id=None if node else user_id, role=role, session_id=session_id, cert=cert
        )
        refresh = issuer.refresh(
            session_id=session_id, node_id=node_id, user_id=None if node else user_id, role=role, cert=cert
        )
        store.add_refresh(jti=refresh.jti, session_id=session_id, expires_at=refresh.expires_at)
        return TokenPair(
            session_token=session.token,
            refresh_token=refresh.token,
            session_id=session_id,
            expires_at=session.expires_at.isoformat(),
        )

    def check_claimed_node(
        caller_node: NodeRecord | None, claimed: str | None, peer: PeerIdentity, ip: str | None
    ) -> None:
        if claimed is not None and (caller_node is None or claimed != caller_node.node_id):
            record(
                ev.access_decision(
                    actor_id=peer.peer_id,
                    actor_type=ev.ActorType.NODE,
                    resource=f"node:{claimed}",
                    action="impersonate",
                    allowed=False,
                    reason="body names another node than the certificate",
                    ip_address=ip,
                )
            )
            err = AuthorizationError(
                "node_id does not match the client certificate", field="node_id", rule="C2"
            )
            err.audited = True  # type: ignore[attr-defined]
            raise err

    def job_visible(caller: Caller, job: JobRecord, action: str) -> None:
        if caller.role == "admin":
            ok, why = (
                caller.token is not None and caller.token.has_scope(Permission.JOB_READ_ALL.value),
                "admin",
            )
        elif caller.role == "node":
            ok, why = job.node_id == caller.principal_id, "assigned node"
        else:
            ok, why = job.user_id == caller.principal_id, "owner"
        auth.allow(
            caller,
            resource=f"job:{job.job_id}",
            action=action,
            allowed=ok,
            reason=why if ok else "job belongs to someone else",
        )

    def job_token_caller(request: Request, job_id: str, scope: str) -> tuple[Caller, JobRecord]:
        caller = auth.authenticate(request, kind=TokenKind.JOB, roles={"node"})
        auth.require_scope(caller, scope)
        job = store.job(job_id)
        ok = caller.token is not None and caller.token.job_id == job_id and job.node_id == caller.principal_id
        auth.allow(
            caller,
            resource=f"job:{job_id}",
            action=scope,
            allowed=ok,
            reason="job token for this job" if ok else "job token is for another job or node",
        )
        return caller, job

    # --- nodes ---------------------------------------------------------------------------------------

    @app.post("/v1/nodes/register", response_model=dict[str, Any], tags=["nodes"])
    def register(body: RegisterRequest, request: Request) -> dict[str, Any]:
        peer = auth.node_peer(request)
        ip = request.client.host if request.client else None
        existing = store.node_by_peer(peer.peer_id)
        check_claimed_node(existing, body.node_id, peer, ip)
        if existing is not None and existing.status in ("banned", "revoked"):
            raise AuthorizationError(f"node is {existing.status}", field="node_id", rule="C1")
        node = store.register_node(
            peer_id=peer.peer_id,
            subject=peer.subject,
            cert_serial=format(peer.serial, "x"),
            hardware=body.hardware.model_dump(),
        )
        record(
            ev.node_registered(
                node_id=node.node_id,
                peer_id=peer.peer_id,
                cert_subject=peer.subject,
                hardware=body.hardware.model_dump(),
                ip_address=ip,
            )
        )
        tokens = open_session(node=node, user_id=None, role="node", peer=peer)
        return {"node_id": node.node_id, "peer_id": peer.peer_id, **tokens.model_dump()}

    @app.post("/v1/nodes/heartbeat", tags=["nodes"])
    def heartbeat(body: HeartbeatRequest, request: Request) -> dict[str, Any]:
        caller = auth.authenticate(request, kind=TokenKind.SESSION, roles={"node"})
        assert caller.peer is not None
        check_claimed_node(caller.node, body.node_id, caller.peer, caller.ip)
        store.heartbeat(caller.principal_id)
        node = store.node(caller.principal_id)
        return {"node_id": node.node_id, "status": node.status, "drain": node.status == "draining"}

    @app.post("/v1/tokens/refresh", response_model=TokenPair, tags=["tokens"])
    def refresh(body: RefreshRequest, request: Request) -> TokenPair:
        from cyxwiz.transport.identity import peer_from_scope

        peer = peer_from_scope(request.scope)
        token = verifier.verify(
            body.refresh_token,
            kind=TokenKind.REFRESH,
            audience=issuer.issuer,
            peer_cert=peer.certificate if peer else None,
        )
        assert token.session_id is not None
        if not store.consume_refresh(jti=token.jti, session_id=token.session_id):
            # Reuse of a rotated refresh token: someone holds a copy. Kill the whole family (B5).
            store.revoke_session(token.session_id)
            record(
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
        role = token.role
        cert = peer.certificate if peer is not None else None
        node_id, user_id = token.node_id, token.user_id
        session = issuer.session(
            node_id=node_id, user_id=user_id, role=role, session_id=token.session_id, cert=cert
        )
        new_refresh = issuer.refresh(
            session_id=token.session_id, node_id=node_id, user_id=user_id, role=role, cert=cert
        )
        store.add_refresh(jti=new_refresh.jti, session_id=token.session_id, expires_at=new_refresh.expires_at)
        return TokenPair(
            session_token=session.token,
            refresh_token=new_refresh.token,
            session_id=token.session_id,
            expires_at=session.expires_at.isoformat(),
        )

    @app.get("/v1/jobs/{job_id}/token", tags=["nodes"])
    def job_token(job_id: str, request: Request) -> dict[str, Any]:
        caller = auth.authenticate(request, kind=TokenKind.SESSION, roles={"node"})
        auth.require_scope(caller, Permission.JOB_ACCEPT.value)
        job = store.job(job_id)
        ok = job.node_id == caller.principal_id and job.status in ("assigned", "running")
        auth.allow(
            caller,
            resource=f"job:{job_id}",
            action="job-token.fetch",
            allowed=ok,
            reason="assigned node" if ok else "job is not assigned to this node",
        )
        assert caller.peer is not None
        issued = issuer.job(
            node_id=caller.principal_id,
            job_id=job_id,
            cert=caller.peer.certificate,
            duration=timedelta(seconds=job.duration_s),
        )
        if job.status == "assigned":
            store.update_job(job_id, status="running")
        return {"job_id": job_id, "job_token": issued.token, "expires_at": issued.expires_at.isoformat()}

    @app.post("/v1/jobs/{job_id}/progress", tags=["nodes"])
    def progress(job_id: str, body: ProgressRequest, request: Request) -> dict[str, Any]:
        _, job = job_token_caller(request, job_id, Permission.METRICS_REPORT.value)
        if job.status not in ("assigned", "running"):
            raise ConflictError(f"job is {job.status}", field="job_id")
        store.update_job(job_id, progress=body.model_dump())
        return {"job_id": job_id, "accepted": True}

    @app.post("/v1/jobs/{job_id}/completion", tags=["nodes"])
    def completion(job_id: str, body: CompletionRequest, request: Request) -> dict[str, Any]:
        caller, job = job_token_caller(request, job_id, Permission.JOB_EXECUTE.value)
        if job.status != "running":
            raise ConflictError(f"job is {job.status}", field="job_id")
        assert caller.peer is not None
        status = hooks.verify_completion(job, body.proof, caller.peer)
        store.update_job(job_id, proof=dict(body.proof), status=status)
        return {"job_id": job_id, "status": status}

    @app.post("/v1/jobs/{job_id}/urls", tags=["nodes"])
    def urls(job_id: str, body: UrlRequest, request: Request) -> dict[str, Any]:
        _, job = job_token_caller(request, job_id, Permission.JOB_EXECUTE.value)
        if not _OBJECT_NAME.fullmatch(body.name) or ".." in body.name.split("/"):
            raise ValidationError("object name must be a relative path without '..'", field="name", rule="E5")
        if body.kind == "input" and body.method != "GET":
            raise AuthorizationError("inputs are read-only", field="method", rule="C3")
        url = hooks.presign(
            job, kind=body.kind, name=body.name, method=body.method, sha256=body.sha256, size=body.size
        )
        return {"job_id": job_id, "url": url, "method": body.method}

    # --- users ---------------------------------------------------------------------------------------

    @app.post("/v1/auth/login", response_model=TokenPair, tags=["users"])
    def login(request: Request) -> TokenPair:
        peer = auth.require_peer(request)
        if peer.role != "user":
            raise AuthorizationError(f"certificate role {peer.role!r} cannot log in as a user", rule="C1")
        from cyxwiz.pki.certs import common_name

        user_id = common_name(peer.certificate) or peer.peer_id
        return open_session(node=None, user_id=user_id, role="user", peer=None)

    @app.post("/v1/jobs", status_code=201, tags=["users"])
    def submit(body: SubmitRequest, request: Request) -> dict[str, Any]:
        caller = auth.authenticate(request, kind=TokenKind.SESSION, roles={"user"})
        auth.require_scope(caller, Permission.JOB_SUBMIT.value)
        spec, duration = hooks.validate_spec(body.spec, user_id=caller.principal_id)
        job = store.create_job(user_id=caller.principal_id, spec=spec, duration_s=duration)
        try:
            hooks.on_submitted(job)
        except Exception:
            store.update_job(job.job_id, status="failed")
            raise
        record(
            ev.job_submitted(
                user_id=caller.principal_id,
                job_id=job.job_id,
                job_type=str(spec.get("job_type")),
                ip_address=caller.ip,
            )
        )
        return store.job(job.job_id).public()

    @app.get("/v1/jobs", tags=["users"])
    def list_jobs(request: Request) -> list[dict[str, Any]]:
        caller = auth.authenticate(request, kind=TokenKind.SESSION, roles={"user", "node", "admin"})
        if caller.role == "admin":
            auth.require_scope(caller, Permission.JOB_READ_ALL.value)
            found = store.list_jobs()
        elif caller.role == "node":
            found = store.list_jobs(node_id=caller.principal_id)
        else:
            found = store.list_jobs(user_id=caller.principal_id)
        return [j.public() for j in found]

    @app.get("/v1/jobs/{job_id}", tags=["users"])
    def get_job(job_id: str, request: Request) -> dict[str, Any]:
        caller = auth.authenticate(request, kind=TokenKind.SESSION, roles={"user", "node", "admin"})
        job = store.job(job_id)
        job_visible(caller, job, "job.read")
        return job.public()

    @app.get("/v1/wallet", tags=["users"])
    def wallet(request: Request) -> dict[str, Any]:
        caller = auth.authenticate(request, kind=TokenKind.SESSION, roles={"user"})
        auth.require_scope(caller, Permission.WALLET_MANAGE.value)
        return hooks.wallet(caller.principal_id)

    # --- admins --------------------------------------------------------------------------------------

    def admin(request: Request, permission: Permission) -> Caller:
        caller = auth.authenticate(request, kind=TokenKind.SESSION, roles={"admin"})
        auth.require_scope(caller, permission.value)
        return caller

    @app.get("/v1/admin/nodes", tags=["admin"])
    def admin_nodes(request: Request) -> list[dict[str, Any]]:
        admin(request, Permission.NODE_MANAGE)
        return [node_payload(n) for n in store.list_nodes()]

    @app.post("/v1/admin/nodes/{node_id}/{action}", tags=["admin"])
    def admin_node_action(
        node_id: str,
        action: Literal["drain", "ban", "activate", "revoke"],
        body: AdminActionRequest,
        request: Request,
    ) -> dict[str, Any]:
        caller = admin(request, Permission.NODE_MANAGE)
        node = store.node(node_id)
        new_status = {"drain": "draining", "ban": "banned", "activate": "active", "revoke": "revoked"}[action]
        if action == "revoke":
            if revoker is None:
                raise ConflictError("no CA configured for revocation", field="action")
            revoker(node, body.reason)
        if action in ("ban", "revoke"):
            store.revoke_sessions_of(node_id)
            record(
                ev.revocation(actor_id=caller.principal_id, kind="node", target=node_id, reason=body.reason)
            )
        record(
            ev.configuration_change(
                actor_id=caller.principal_id,
                setting=f"node:{node_id}:status",
                changes={"status": (node.status, new_status)},
                ip_address=caller.ip,
            )
        )
        return node_payload(store.set_node_status(node_id, new_status))

    @app.get("/v1/admin/jobs", tags=["admin"])
    def admin_jobs(request: Request) -> list[dict[str, Any]]:
        admin(request, Permission.JOB_READ_ALL)
        return [j.public() for j in store.list_jobs()]

    @app.get("/v1/admin/config", tags=["admin"])
    def admin_config(request: Request) -> dict[str, Any]:
        admin(request, Permission.SYSTEM_CONFIGURE)
        return store.all_config()

    @app.put("/v1/admin/config/{key}", tags=["admin"])
    def admin_set_config(key: str, body: ConfigRequest, request: Request) -> dict[str, Any]:
        caller = admin(request, Permission.SYSTEM_CONFIGURE)
        if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,127}", key):
            raise ValidationError("config keys are lower-case words", field="key")
        old = store.set_config(key, body.value)
        record(
            ev.configuration_change(
                actor_id=caller.principal_id,
                setting=key,
                changes={"value": (old, body.value)},
                ip_address=caller.ip,
            )
        )
        return {"key": key, "old": old, "new": body.value}

    @app.get("/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    async def refuse(scope: dict[str, Any], send: Any, exc: Exception) -> None:
        await send_problem(scope, send, exc, audit=audit)

    # The FastAPI app stays reachable as ``.app`` (OpenAPI: ``create_app(...).app.openapi()``).
    return GuardMiddleware(
        app, ip_limiter=RateLimiter(rate=ip_rate[0], burst=ip_rate[1]), max_body=max_body, refuse=refuse
    )
