"""The gateway: node-facing mTLS front door to the Prefect API (SPEC C3, D1, B5, I, H2).

Nodes never reach Prefect directly. Each request must come over mTLS with a worker certificate and carry
that node's session token (``Authorization: Bearer <jwt>``, or HTTP Basic with the jwt as password, which
is what Prefect's ``PREFECT_API_AUTH_STRING`` produces); the token must be bound to the same certificate.
Only allow-listed routes pass (:mod:`cyxwiz.gateway.policy`), narrowed to the node's own work queue and the
flow runs in it. Every decision is audited; refusals are problem+json (HTTP) or close code 1008 (websocket).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.exceptions import WebSocketException

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.coordinator.limits import RateLimiter
from cyxwiz.coordinator.problems import send_problem
from cyxwiz.errors import (
    AuthenticationError,
    AuthorizationError,
    CyxwizError,
    UpstreamError,
    ValidationError,
)
from cyxwiz.gateway.ids import BODYLESS_METHODS, canonical_uuid, forwarded_headers
from cyxwiz.gateway.model import Caller, NodeView, TaskRuns
from cyxwiz.gateway.objects import OwnedObjects, _json_list
from cyxwiz.gateway.policy import Match, match
from cyxwiz.gateway.standing import CUT_OFF, LiveChannels, RevocationWatch, Standing
from cyxwiz.gateway.websockets import WebSocketProxy
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.identity import peer_from_scope

log = logging.getLogger(__name__)


class Gateway(OwnedObjects, WebSocketProxy):
    """ASGI app proxying the allow-listed Prefect API for authenticated nodes."""

    def __init__(
        self,
        *,
        upstream: str,
        pool: str,
        verifier: TokenVerifier,
        audit: AuditSink | None = None,
        queue_for: Callable[[str], str] = lambda node_id: node_id,
        upstream_auth: str | None = None,
        require_job_token: bool = True,
        node_rate: tuple[float, int] = (50.0, 200),
        message_rate: tuple[float, int] = (100.0, 400),
        standing: Standing | None = None,
        timeout: float = 30.0,
        auth_timeout: float = 10.0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.pool = pool
        self.verifier = verifier
        self.audit = audit
        self.queue_for = queue_for
        self.upstream_auth = upstream_auth
        self.require_job_token = require_job_token
        self.auth_timeout = auth_timeout
        self.limiter = RateLimiter(rate=node_rate[0], burst=node_rate[1])
        #: Websocket messages per node, over all its channels (a flood of events is a flood too).
        self.ws_limiter = RateLimiter(rate=message_rate[0], burst=message_rate[1])
        self.views: dict[str, NodeView] = {}
        #: Task runs by the node that first named one in an event about its own flow run.
        self.task_runs = TaskRuns()
        #: Ids of the GPU work pool, learned from upstream answers about it (events name pools by id).
        self.pool_ids: set[str] = set()
        #: The coordinator's records: bans, revoked sessions, dead jobs (None only in unit tests).
        self.standing = standing
        self.live = LiveChannels()
        self.watch: RevocationWatch | None = None
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=timeout)
        self._upstream_headers: dict[str, str] = {}
        if upstream_auth:
            basic = base64.b64encode(upstream_auth.encode()).decode()
            self._upstream_headers["authorization"] = f"Basic {basic}"

    # --- ASGI -----------------------------------------------------------------------------------------

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.watch is not None:
                    self.watch.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.watch is not None:
                    self.watch.stop()
                await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        websocket = scope["type"] == "websocket"
        if websocket and not any(name == b"authorization" for name, _ in scope.get("headers") or []):
            await self._websocket_message_auth(scope, receive, send)
            return
        try:
            caller = self._authenticate(scope)
            found = match(scope.get("method", "GET"), scope["path"], websocket=websocket)
            if found is None:
                raise AuthorizationError("route is not on the gateway allow-list", field="path", rule="C3")
            found.route.rule.check_role_scope(caller.token.role, caller.token.scopes)
            if websocket:
                await self._websocket(scope, receive, send, caller, found)
            else:
                await self._http(scope, receive, send, caller, found)
        except CyxwizError as exc:
            await send_problem(scope, send, exc, audit=self.audit)
        except (OSError, WebSocketException):
            if not websocket:
                raise
            # The Prefect API did not answer the websocket: tell the node to come back, no traceback.
            await send({"type": "websocket.close", "code": 1011})

    # --- identity -------------------------------------------------------------------------------------

    def _authenticate(self, scope: dict[str, Any]) -> Caller:
        peer = peer_from_scope(scope)
        if peer is None:
            raise AuthenticationError("a client certificate is required", field="certificate", rule="D1")
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"authorization", b"").decode("latin-1")
        kind, _, value = raw.partition(" ")
        token = value.strip()
        if kind.lower() == "basic":
            try:
                token = base64.b64decode(token, validate=True).decode().partition(":")[2]
            except ValueError:
                token = ""
        elif kind.lower() != "bearer":
            token = ""
        if not token:
            raise AuthenticationError(
                "the node's session token is required", field="authorization", rule="B1"
            )
        verified = self.verifier.verify(token, kind=TokenKind.SESSION, peer_cert=peer.certificate)
        if verified.role != "node" or verified.node_id is None:
            raise AuthorizationError("only nodes use the gateway", field="role", rule="C1")
        if self.standing is not None:
            if verified.session_id is None or self.standing.is_session_revoked(verified.session_id):
                raise AuthenticationError("session revoked", field="session_id", rule="B5")
            status = self.standing.node_status(verified.node_id)
            if status is None or status in CUT_OFF:
                raise AuthorizationError(f"node is {status or 'unknown'}", field="node_id", rule="C1")
        self.limiter.check(f"node:{verified.node_id}")
        ip = (scope.get("client") or (None, 0))[0]
        caller = Caller(verified.node_id, self.queue_for(verified.node_id), peer, verified, ip)
        scope.setdefault("state", {})["caller"] = _AuditCaller(verified.node_id)
        return caller

    def _decide(self, caller: Caller, resource: str, action: str, allowed: bool, reason: str) -> None:
        if self.audit is not None:
            self.audit.record(
                ev.access_decision(
                    actor_id=caller.node_id,
                    actor_type=ev.ActorType.NODE,
                    resource=resource,
                    action=action,
                    allowed=allowed,
                    reason=reason,
                    ip_address=caller.ip if caller.ip and caller.ip[0].isdigit() else None,
                )
            )
        if not allowed:
            err = AuthorizationError(reason, field="path", rule="C3")
            err.audited = True  # type: ignore[attr-defined]
            raise err

    # --- HTTP -----------------------------------------------------------------------------------------

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any, caller: Caller, m: Match) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        method = scope["method"]
        kind = m.route.scope
        if body and method in BODYLESS_METHODS:
            raise ValidationError(f"a {method} request carries no body", field="body", rule="I")
        if m.object_id is not None:
            # Decisions and upstream both see the id in canonical form (never the spelling the node chose).
            canonical = canonical_uuid(m.object_id, field="path")
            scope = {**scope, "path": scope["path"].replace(m.object_id, canonical)}
            m = Match(m.route, m.pool, canonical)
        path = scope["path"]
        resource = f"prefect:{method} {path}"
        post_filter: Callable[[Any], Any] | None = None
        if m.pool is not None and m.pool != self.pool:
            self._decide(caller, resource, kind, False, f"work pool {m.pool!r} is not the node pool")
        if kind in ("scheduled_runs", "run_filter", "queue_filter"):
            body, post_filter = self._narrow(kind, caller, body)
        elif kind == "flow_run":
            await self._flow_run(scope, caller, resource, body, m)
        elif kind in ("deployment", "flow", "worker_heartbeat", "work_queue"):
            await self._named_object(caller, resource, body, m, path=path)
        elif kind == "logs":
            await self._logs(caller, resource, _json_list(body))
        elif kind in ("artifact_create", "artifact"):
            body, post_filter = await self._artifact(caller, resource, kind, body, m)
        if kind == "pool" and method == "GET":
            post_filter = self._learn_pool
        if kind in ("global", "pool", "scheduled_runs", "queue_filter", "run_filter"):
            self._decide(caller, resource, kind, True, "allow-listed")
        await self._forward(scope, send, body, post_filter)

    async def _forward(
        self, scope: dict[str, Any], send: Any, body: bytes, post: Callable[[Any], Any] | None
    ) -> None:
        headers = forwarded_headers(scope["headers"])
        headers.update(self._upstream_headers)
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope["path"] + (f"?{query}" if query else "")
        content = body if scope["method"] not in BODYLESS_METHODS else None
        try:
            resp = await self._client.request(scope["method"], url, content=content, headers=headers)
        except httpx.TransportError as exc:
            # A pooled connection the loaded API server closed, or the server restarting: a 502, which the
            # Prefect client retries, not a 500 that fails the node's call (issue 21).
            log.warning("upstream %s %s failed: %s", scope["method"], scope["path"], type(exc).__name__)
            raise UpstreamError("the Prefect API did not answer", hint="retry") from None
        content = resp.content
        if post is not None and resp.status_code in (200, 201):
            content = json.dumps(post(resp.json())).encode()
        out = [
            (k.encode(), v.encode())
            for k, v in resp.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")
        ]
        out.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
        await send({"type": "http.response.body", "body": content})


@dataclass(frozen=True)
class _AuditCaller:
    """What the problem handler needs to name the actor of a refusal."""

    principal_id: str
    actor_type: str = "node"


async def _read_body(receive: Any) -> bytes | None:
    """The whole request body, or None when the client went away."""
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body
