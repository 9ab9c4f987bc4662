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

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.authz.policies import OPEN_JOB_STATES
from cyxwiz.coordinator.limits import RateLimiter
from cyxwiz.coordinator.problems import send_problem
from cyxwiz.errors import AuthenticationError, AuthorizationError, CyxwizError, ValidationError
from cyxwiz.gateway.events import worker_name
from cyxwiz.gateway.ids import BODYLESS_METHODS, canonical_uuid, canonical_uuid_or_none, forwarded_headers
from cyxwiz.gateway.model import Caller, NodeView, artifact_namespace, job_id_of
from cyxwiz.gateway.policy import Match, match
from cyxwiz.gateway.standing import CUT_OFF, LiveChannels, RevocationWatch, Standing
from cyxwiz.gateway.websockets import WebSocketProxy
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.identity import peer_from_scope

log = logging.getLogger(__name__)

_BLOCKED_RUN_FIELDS = frozenset({"work_queue_name", "work_queue_id", "work_pool_name", "deployment_id"})


class Gateway(WebSocketProxy):
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
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.pool = pool
        self.verifier = verifier
        self.audit = audit
        self.queue_for = queue_for
        self.upstream_auth = upstream_auth
        self.require_job_token = require_job_token
        self.limiter = RateLimiter(rate=node_rate[0], burst=node_rate[1])
        #: Websocket messages per node, over all its channels (a flood of events is a flood too).
        self.ws_limiter = RateLimiter(rate=message_rate[0], burst=message_rate[1])
        self.views: dict[str, NodeView] = {}
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

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
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

    # --- ownership ------------------------------------------------------------------------------------

    def view(self, node_id: str) -> NodeView:
        return self.views.setdefault(node_id, NodeView())

    def _learn(self, caller: Caller, run: dict[str, Any]) -> bool:
        """Record ``run`` as the caller's when it sits in the caller's queue of our pool."""
        if run.get("work_queue_name") != caller.queue or run.get("work_pool_name") not in (None, self.pool):
            return False
        run_id = canonical_uuid_or_none(run.get("id"))
        if run_id is None:
            return False
        view = self.view(caller.node_id)
        view.runs[run_id] = job_id_of(run)
        for key, known in (
            ("deployment_id", view.deployments),
            ("flow_id", view.flows),
            ("work_queue_id", view.queue_ids),
        ):
            ident = canonical_uuid_or_none(run.get(key))
            if ident is not None:
                known.add(ident)
        return True

    async def _owns_run(self, caller: Caller, run_id: str) -> bool:
        run_id = canonical_uuid(run_id, field="flow_run_id")
        if run_id in self.view(caller.node_id).runs:
            return True
        resp = await self._client.get(f"/api/flow_runs/{run_id}", headers=self._upstream_headers)
        return resp.status_code == 200 and self._learn(caller, resp.json())

    def _check_job_token(self, scope: dict[str, Any], caller: Caller, run_id: str) -> None:
        """A call on a job's flow run also needs that job's token (SPEC B1, C3).

        The session token says which node is calling; the job token says the node still holds the job
        (the coordinator mints it at assignment and revokes it when the job ends). A stolen session token
        alone therefore cannot read or steer a job's run. Runs that carry no job (a node health check)
        hold nothing a job token would protect.
        """
        if not self.require_job_token:
            return
        expected = self.view(caller.node_id).runs.get(canonical_uuid(run_id, field="flow_run_id"))
        if expected is None:
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"x-cyxwiz-job-token", b"").decode("latin-1").strip()
        if not raw:
            raise AuthenticationError(
                "a call on a job's flow run needs that job's token", field="x-cyxwiz-job-token", rule="B1"
            )
        job = self.verifier.verify(raw, kind=TokenKind.JOB, peer_cert=caller.peer.certificate)
        ok = job.node_id == caller.node_id and job.job_id == expected
        why = "job token for this run" if ok else "job token is for another job"
        if ok and self.standing is not None and job.job_id is not None:
            # A job token dies with its job (revoke_job_token, proof submitted, released, refunded).
            status = self.standing.job_status(job.job_id)
            ok = status in OPEN_JOB_STATES
            why = why if ok else f"job token is dead: job is {status or 'unknown'}"
        self._decide(caller, f"flow_run:{run_id}", "job-token", ok, why)

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

    async def _named_object(self, caller: Caller, resource: str, body: bytes, m: Match, *, path: str) -> None:
        """A deployment, flow, work queue or worker the call names must be the node's own."""
        kind = m.route.scope
        view = self.view(caller.node_id)
        if kind in ("deployment", "flow"):
            known = m.object_id in (view.deployments if kind == "deployment" else view.flows)
            why = f"{kind} of own run" if known else f"{kind} not of own runs"
        elif kind == "worker_heartbeat":
            known = (_json(body) if body else {}).get("name") == worker_name(caller.queue)
            why = "own worker" if known else "heartbeat for another worker"
        else:
            resp = await self._client.get(path, headers=self._upstream_headers)
            known = resp.status_code == 200 and resp.json().get("name") == caller.queue
            why = "own queue" if known else "queue of another node"
            if known and m.object_id is not None:
                view.queue_ids.add(m.object_id)
        self._decide(caller, resource, kind, known, why)

    async def _flow_run(
        self, scope: dict[str, Any], caller: Caller, resource: str, body: bytes, m: Match
    ) -> None:
        assert m.object_id is not None
        owned = await self._owns_run(caller, m.object_id)
        self._decide(
            caller, resource, "flow_run", owned, "run in own queue" if owned else "flow run of another node"
        )
        self._check_job_token(scope, caller, m.object_id)
        if scope["method"] == "PATCH" and scope["path"].rstrip("/").endswith(m.object_id):
            changed = set(_json(body)) & _BLOCKED_RUN_FIELDS if body else set()
            self._decide(
                caller,
                resource,
                "flow_run.patch",
                not changed,
                f"may not change {sorted(changed)}" if changed else "fields allowed",
            )

    def _narrow(self, kind: str, caller: Caller, body: bytes) -> tuple[bytes, Callable[[Any], Any]]:
        """Listing calls: whatever was asked, the request names only the node's queue, and the answer is
        filtered again to what is the node's (upstream is not trusted to have honoured the request)."""
        if kind == "queue_filter":
            return body, lambda items: [q for q in items if q.get("name") == caller.queue]
        request = _json(body) if body else {}
        if kind == "scheduled_runs":
            request["work_queue_names"] = [caller.queue]
            body = json.dumps(request).encode()
            return body, lambda items: [i for i in items if self._learn(caller, i.get("flow_run", {}))]
        # run_filter: the worker's cancellation observer asks for the state of its in-flight runs.
        runs = request.get("flow_runs")
        narrowed: dict[str, Any] = runs if isinstance(runs, dict) else {}
        narrowed["work_queue_name"] = {"any_": [caller.queue]}
        request["flow_runs"] = narrowed
        request["work_pools"] = {"name": {"any_": [self.pool]}}
        # A job's parameters are read with that job's token (on the run itself), not in a listing.
        return json.dumps(request).encode(), lambda items: [
            {**r, "parameters": {}} for r in items if self._learn(caller, r)
        ]

    def _learn_pool(self, answer: Any) -> Any:
        ident = canonical_uuid_or_none(answer.get("id")) if isinstance(answer, dict) else None
        if ident is not None and answer.get("name") == self.pool:
            self.pool_ids.add(ident)
        return answer

    async def _logs(self, caller: Caller, resource: str, lines: list[dict[str, Any]]) -> None:
        """Every log line names one of the node's own flow runs: a line naming none is refused too (a log
        without a run lands in the server's global log, outside every job)."""
        runs = set()
        for line in lines:
            run_id = canonical_uuid_or_none(line.get("flow_run_id"))
            if run_id is None:
                self._decide(caller, resource, "logs", False, "log line names no flow run")
            runs.add(run_id)
        for run_id in runs:
            assert run_id is not None
            owned = await self._owns_run(caller, run_id)
            self._decide(
                caller, resource, "logs", owned, "logs of own run" if owned else "logs for another run"
            )

    async def _artifact(
        self, caller: Caller, resource: str, kind: str, body: bytes, m: Match
    ) -> tuple[bytes, Callable[[Any], Any] | None]:
        """Artifacts (progress, training curve) only for the node's own runs, under the node's own key
        namespace; updates only to its own."""
        view = self.view(caller.node_id)
        if kind == "artifact":
            known = m.object_id in view.artifacts
            self._decide(
                caller, resource, kind, known, "own artifact" if known else "artifact the node did not create"
            )
            changes = _json(body) if body else {}
            moved = {"key", "flow_run_id", "task_run_id"} & set(changes)
            self._decide(
                caller,
                resource,
                kind,
                not moved,
                f"may not change {sorted(moved)}" if moved else "fields allowed",
            )
            return body, None
        request = _json(body) if body else {}
        run_id = canonical_uuid_or_none(request.get("flow_run_id"))
        owned = run_id is not None and await self._owns_run(caller, run_id)
        self._decide(
            caller, resource, kind, owned, "artifact of own run" if owned else "artifact for another run"
        )
        key = request.get("key")
        if key is not None:
            # The node's keys live in its own namespace (never verification-*, audit-*, ... of the control
            # plane): a key outside it is moved into it.
            namespace = artifact_namespace(caller.node_id)
            valid = isinstance(key, str) and key.replace("-", "").isalnum() and key == key.lower()
            self._decide(
                caller,
                resource,
                kind,
                valid,
                "artifact key" if valid else "artifact key is not lower-case words",
            )
            assert isinstance(key, str)
            request["key"] = key if key.startswith(namespace + "-") else f"{namespace}-{key}"
        request["flow_run_id"] = run_id

        def remember(created: Any) -> Any:
            if isinstance(created, dict) and created.get("id"):
                view.artifacts.add(str(created["id"]))
            return created

        return json.dumps(request).encode(), remember

    async def _forward(
        self, scope: dict[str, Any], send: Any, body: bytes, post: Callable[[Any], Any] | None
    ) -> None:
        headers = forwarded_headers(scope["headers"])
        headers.update(self._upstream_headers)
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope["path"] + (f"?{query}" if query else "")
        content = body if scope["method"] not in BODYLESS_METHODS else None
        resp = await self._client.request(scope["method"], url, content=content, headers=headers)
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


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ValidationError("request body is not valid JSON", field="body") from None
    if not isinstance(value, dict):
        raise ValidationError("request body must be a JSON object", field="body")
    return value


def _json_list(body: bytes) -> list[dict[str, Any]]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ValidationError("request body is not valid JSON", field="body") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValidationError("logs must be a JSON list of objects", field="body")
    return value
