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

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.errors import AuthenticationError, AuthorizationError, CyxwizError
from cyxwiz.gateway import events
from cyxwiz.gateway.model import Caller, NodeView
from cyxwiz.gateway.policy import Match, match


class WebSocketProxy:
    """Mixed into :class:`cyxwiz.gateway.proxy.Gateway`, which provides identity, decisions and views."""

    upstream: str
    upstream_auth: str | None
    pool: str
    audit: AuditSink | None
    _upstream_headers: dict[str, str]

    def _authenticate(self, scope: dict[str, Any]) -> Caller:
        raise NotImplementedError

    def _decide(self, caller: Caller, resource: str, action: str, allowed: bool, reason: str) -> None:
        raise NotImplementedError

    def view(self, node_id: str) -> NodeView:
        raise NotImplementedError

    async def _websocket_message_auth(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Prefect's worker channel and event subscriber authenticate with a first ``auth`` message, not
        a header: accept, read that message, verify the node's token from it, then proxy as usual."""
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        protocols = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": protocols[0] if protocols else None})
        message = await receive()
        text = message.get("text") if message.get("type") == "websocket.receive" else None
        try:
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
        await self._websocket(scope, receive, send, caller, found, accepted=True, first_text=text)

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
        from websockets.exceptions import ConnectionClosed

        kind = m.route.scope
        runs = self.view(caller.node_id).runs  # updated in place as the node's runs are learned
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

            async def client_to_upstream() -> None:
                while True:
                    msg = await receive()
                    if msg["type"] == "websocket.disconnect":
                        await up.close()
                        return
                    text = msg.get("text")
                    if text is not None:
                        if kind == "events_in" and not self._event_emittable(caller, text):
                            continue
                        await up.send(self._rewrite_client(caller, kind, text))
                    elif msg.get("bytes") is not None and kind != "events_in":
                        await up.send(msg["bytes"])

            async def upstream_to_client() -> None:
                try:
                    async for data in up:
                        if isinstance(data, str):
                            if kind == "events_out" and not events.visible(data, runs):
                                continue
                            await send({"type": "websocket.send", "text": data})
                        else:
                            await send({"type": "websocket.send", "bytes": data})
                except ConnectionClosed:
                    pass
                with contextlib.suppress(Exception):  # the client may already be gone; nothing to tell it
                    await send({"type": "websocket.close", "code": 1000})

            tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
            _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    def _rewrite_client(self, caller: Caller, kind: str, text: str) -> str:
        message = events.json_object(text)
        if message is None:
            return text
        if message.get("type") == "auth":
            # The node's credential stays here; upstream sees the gateway's own (or none).
            message["token"] = self.upstream_auth
        elif message.get("type") == "filter" and kind == "events_out":
            message["filter"] = events.narrowed_filter(message.get("filter"))
        return json.dumps(message)

    def _event_emittable(self, caller: Caller, text: str) -> bool:
        """Events a node emits must be about its own runs or worker; others are dropped and audited."""
        reason = events.emit_refusal(text, self.view(caller.node_id).runs, queue=caller.queue)
        if reason is not None and self.audit is not None:
            self.audit.record(
                ev.access_decision(
                    actor_id=caller.node_id,
                    actor_type=ev.ActorType.NODE,
                    resource="prefect:WS /api/events/in",
                    action="events_in.event",
                    allowed=False,
                    reason=reason,
                )
            )
        return reason is None
