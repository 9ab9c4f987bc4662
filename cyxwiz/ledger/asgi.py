"""The local ledger service's request loop: a plain ASGI app on loopback plumbing (uvicorn).

It answers the lifespan protocol, reads one JSON body of at most ``max_body`` bytes, hands it to its
``dispatch`` on the event loop's one thread (LiteSVM lives there) and writes a JSON answer with its length.
The verifier and the issuer, whose handlers run in a thread per connection, are served by
:mod:`cyxwiz.unix_json_server` instead.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: the parsed request -> (HTTP status, JSON payload); ``body`` is ``None`` for an empty body
Dispatch = Callable[[str, str, Any], Awaitable[tuple[int, Any]]]


class BodyTooLarge(Exception):
    """The request body exceeded the service's limit (answered 413)."""


async def read_body(receive: Receive, *, max_body: int) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > max_body:
            raise BodyTooLarge
    return body


async def respond(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_json(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    dispatch: Dispatch,
    max_body: int,
    too_large: Any,
    not_json: tuple[int, Any],
) -> None:
    """One ASGI call: lifespan, or one JSON request answered by ``dispatch`` (``too_large``: the 413
    payload; ``not_json``: the status and payload for a body that does not parse)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    try:
        body = await read_body(receive, max_body=max_body)
    except BodyTooLarge:
        await respond(send, 413, too_large)
        return
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        await respond(send, *not_json)
        return
    status, payload = await dispatch(scope["method"], scope["path"], parsed)
    await respond(send, status, payload)


def run_on_socket(app: Any, sock: socket.socket, *, ready_file: Path | None, ready: dict[str, Any]) -> None:
    """Serve ``app`` on a bound, listening socket until interrupted; write ``ready`` (atomically, with
    this process's pid) to ``ready_file`` first, so the parent waiting on it never reads half a file."""
    import uvicorn

    from cyxwiz.unix_json_server import announce_ready

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    announce_ready(ready_file, ready)
    server.run(sockets=[sock])
