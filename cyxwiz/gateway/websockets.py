"""The websocket half of the gateway: Prefect's worker channel and event streams (SPEC C3, B5, I).

Prefect's worker channel and event subscriber authenticate with a first ``auth`` message rather than a
header; events the node emits are checked one by one, events it receives are narrowed to its runs
(:mod:`cyxwiz.gateway.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.exceptions import WebSocketException

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.coordinator.limits import RateLimiter
from cyxwiz.errors import AuthenticationError, AuthorizationError, CyxwizError
from cyxwiz.gateway import events, worker_channel
from cyxwiz.gateway.model import Caller, NodeView, TaskRuns
from cyxwiz.gateway.policy import Match, match
from cyxwiz.gateway.standing import LiveChannels, Standing

#: Task runs one event may name (its own, and the task runs it runs inside): each new one costs a lookup.
MAX_TASK_RUNS_PER_EVENT = 8


class WebSocketProxy:
    """Mixed into :class:`cyxwiz.gateway.proxy.Gateway`, which provides identity, decisions and views."""

    upstream: str
    upstream_auth: str | None
    pool: str
    audit: AuditSink | None
    ws_limiter: RateLimiter
    live: LiveChannels
    standing: Standing | None
    task_runs: TaskRuns
    #: Seconds a websocket that authenticates by message may stay open before that message arrives.
    auth_timeout: float
    pool_ids: set[str]
    _upstream_headers: dict[str, str]

    def _authenticate(self, scope: dict[str, Any]) -> Caller:
        raise NotImplementedError

    def _decide(self, caller: Caller, resource: str, action: str, allowed: bool, reason: str) -> None:
        raise NotImplementedError

    def view(self, node_id: str) -> NodeView:
        raise NotImplementedError

    async def _attribute_task_run(self, caller: Caller, task_run: str) -> bool:
        raise NotImplementedError

    def _job_over(self, caller: Caller, run_id: str) -> str | None:
        raise NotImplementedError

    async def _websocket_message_auth(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Prefect's worker channel and event subscriber authenticate with a first ``auth`` message, not
        a header: accept, read that message, verify the node's token from it, then proxy as usual."""
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        protocols = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": protocols[0] if protocols else None})
        try:
            # An open socket that never says who it is holds a slot: it gets ``auth_timeout`` to say (I).
            message = await asyncio.wait_for(receive(), self.auth_timeout)
        except TimeoutError:
            message = {"type": "websocket.timeout"}
        text = message.get("text") if message.get("type") == "websocket.receive" else None
        try:
            if message["type"] == "websocket.timeout":
                raise AuthenticationError(
                    f"no auth message within {self.auth_timeout:g} s", field="authorization", rule="I"
                )
            parsed = json.loads(text) if text else None
            token = parsed.get("token") if isinstance(parsed, dict) and parsed.get("type") == "auth" else None
            if not isinstance(token, str) or not token:
                raise AuthenticationError(
                    "the node's session token is required", field="authorization", rule="B1"
                )
            # PREFECT_API_AUTH_STRING is "node:<session token>"; the token is what follows the colon.
            bearer = token.partition(":")[2] or token
            scope["headers"] = [
                *(scope.get("headers") or []),
                (b"authorization", f"Bearer {bearer}".encode()),
            ]
            caller = self._authenticate(scope)
            found = match(scope.get("method", "GET"), scope["path"], websocket=True)
            if found is None:
                raise AuthorizationError("route is not on the gateway allow-list", field="path", rule="C3")
            found.route.rule.check_role_scope(caller.token.role, caller.token.scopes)
        except CyxwizError as exc:
            if self.audit is not None:
                self.audit.record(
                    ev.auth_attempt(
                        actor_id="unknown", actor_type="node", success=False, method="websocket-auth",
                        reason=str(exc),
                    )
                )  # fmt: skip
            await send(
                {"type": "websocket.close", "code": 4401 if isinstance(exc, AuthenticationError) else 4403}
            )
            return
        assert text is not None
        try:
            await self._websocket(scope, receive, send, caller, found, accepted=True, first_text=text)
        except CyxwizError:
            # Refused after the accept (another pool, ...): already audited; the close says it (C3).
            await send({"type": "websocket.close", "code": 1008})
        except (OSError, WebSocketException):
            await send({"type": "websocket.close", "code": 1011})  # the Prefect API did not answer

    async def _websocket(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        caller: Caller,
        m: Match,
        *,
        accepted: bool = False,
        first_text: str | None = None,
    ) -> None:
        from websockets.asyncio.client import connect

        kind = m.route.scope
        if m.pool is not None and m.pool != self.pool:
            self._decide(caller, scope["path"], kind, False, f"work pool {m.pool!r} is not the node pool")
        self._decide(caller, f"prefect:WS {scope['path']}", kind, True, "allow-listed websocket")
        if not accepted:
            first = await receive()
            if first["type"] != "websocket.connect":
                return
        url = self.upstream.replace("http", "ws", 1) + scope["path"]
        protocols = scope.get("subprotocols") or []
        async with connect(
            url, subprotocols=protocols or None, additional_headers=self._upstream_headers
        ) as up:
            if not accepted:
                await send({"type": "websocket.accept", "subprotocol": up.subprotocol})
            if first_text is not None:
                await up.send(self._rewrite_client(caller, kind, first_text))

            key, closed = self.live.open(caller.node_id, caller.token.session_id)
            tasks = [
                asyncio.create_task(self._client_to_upstream(caller, kind, receive, send, up)),
                asyncio.create_task(self._upstream_to_client(caller, kind, send, up)),
                asyncio.create_task(_close_when(closed, send, up)),
            ]
            try:
                _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.live.close(key)
            for task in pending:
                task.cancel()

    async def _client_to_upstream(self, caller: Caller, kind: str, receive: Any, send: Any, up: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                await up.close()
                return
            text = msg.get("text")
            refusal = await self._message_refusal(caller, kind, text)
            if refusal is None and text is not None:
                await up.send(self._rewrite_client(caller, kind, text))
                continue
            self._refused_message(caller, kind, refusal or "binary frames are not part of the protocol")
            if kind != "events_in":
                # Dropping a worker-channel frame would desynchronise the protocol: end the channel.
                await send({"type": "websocket.close", "code": 1008})
                await up.close()
                return

    async def _upstream_to_client(self, caller: Caller, kind: str, send: Any, up: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for data in up:
                if isinstance(data, str) and self._message_visible(caller, kind, data):
                    await send({"type": "websocket.send", "text": data})
        except ConnectionClosed:
            pass
        with contextlib.suppress(Exception):  # the client may already be gone; nothing to tell it
            await send({"type": "websocket.close", "code": 1000})

    def _rewrite_client(self, caller: Caller, kind: str, text: str) -> str:
        message = events.json_object(text)
        if message is None:
            return text
        if message.get("type") == "auth":
            # The node's credential stays here; upstream sees the gateway's own (or none), and nothing
            # else the node put beside it.
            message = {"type": "auth", "token": self.upstream_auth}
        elif message.get("type") == "filter" and kind == "events_out":
            message["filter"] = events.narrowed_filter(message.get("filter"))
        elif kind == "worker_connect":
            message = worker_channel.rewritten_client_frame(message)
        return json.dumps(message)

    async def _message_refusal(self, caller: Caller, kind: str, text: str | None) -> str | None:
        """Why a message the node sends is refused (every channel, every message), or None."""
        try:
            self.ws_limiter.check(f"node:{caller.node_id}", what="websocket messages")
        except CyxwizError as exc:
            return str(exc)
        if text is None:
            return "binary frames are not part of the protocol"
        view = self.view(caller.node_id)
        if kind == "events_in":
            named = events.task_run_ids(events.json_object(text))

            # The cheap checks first (nothing asked upstream for an event refused anyway), then each task
            # run not seen before is attributed by the API: a handful per event, never a flood of lookups.
            def maybe(task_run: str) -> bool:
                return self.task_runs.owner(task_run) in (None, caller.node_id)

            refusal = events.emit_refusal(text, view, queue=caller.queue, pool_ids=self.pool_ids, tasks=maybe)
            if refusal is None and len(named) > MAX_TASK_RUNS_PER_EVENT:
                refusal = f"event names more than {MAX_TASK_RUNS_PER_EVENT} task runs"
            if refusal is None:
                mine = {t for t in named if await self._attribute_task_run(caller, t)}
                refusal = events.emit_refusal(
                    text, view, queue=caller.queue, pool_ids=self.pool_ids, tasks=mine.__contains__
                )
            refusal = refusal or self._dead_job_event(caller, text)
            if refusal is None:
                # Only an accepted event makes a new task run the node's (a refused one claims nothing).
                for task_run in named:
                    self.task_runs.claim(task_run, caller.node_id)
            return refusal
        if kind == "worker_connect":
            return worker_channel.client_frame_refusal(text, view, queue=caller.queue)
        message = events.json_object(text)
        return None if message is not None else "not a JSON object"

    def _dead_job_event(self, caller: Caller, text: str) -> str | None:
        """An event about a run whose job was re-dispatched to another node, or is over (settled,
        cancelled, its token revoked), is not the node's to send (issues 18, 21; C3)."""
        event = events.json_object(text)
        ids = events.resource_ids(event) if event is not None else None
        if not ids or self.standing is None:
            return None
        view = self.view(caller.node_id)
        for rid in ids:
            run_id = events.flow_run_of(rid) or events.artifact_run_of(rid, view.artifact_runs)
            why = self._job_over(caller, run_id) if run_id is not None else None
            if why is not None:
                return why
        return None

    def _message_visible(self, caller: Caller, kind: str, text: str) -> bool:
        view = self.view(caller.node_id)
        if kind == "events_out":
            return events.visible(
                text,
                view,
                queue=caller.queue,
                tasks=lambda task_run: self.task_runs.owner(task_run) in (None, caller.node_id),
            )
        if kind == "worker_connect":
            return worker_channel.server_frame_visible(text, view)
        return True

    def _refused_message(self, caller: Caller, kind: str, reason: str) -> None:
        if self.audit is not None:
            self.audit.record(
                ev.access_decision(
                    actor_id=caller.node_id,
                    actor_type=ev.ActorType.NODE,
                    resource=f"prefect:WS {kind}",
                    action=f"{kind}.message" if kind != "events_in" else "events_in.event",
                    allowed=False,
                    reason=reason,
                )
            )


async def _close_when(closed: asyncio.Event, send: Any, up: Any) -> None:
    """Set by the revocation watcher: a ban or a revoked session ends the channel (A6, B5)."""
    await closed.wait()
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": 1008})
    await up.close()
