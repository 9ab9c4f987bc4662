"""The one request loop of the small HTTP services (the ledger service, the verifier, the issuer).

All are plain ASGI apps on loopback plumbing: they answer the lifespan protocol, read one JSON body of at
most ``max_body`` bytes, hand it to a synchronous handler and write a JSON answer with its length. Only
what each does with the parsed body differs (its ``dispatch``). The verifier and the issuer also share
their error answers, the worker thread their handler runs in, and the Unix socket they listen on.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
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


#: a service's synchronous request handler: (method, path, parsed body) -> (HTTP status, JSON payload)
Handle = Callable[[str, str, Any], tuple[int, Any]]


async def serve_json_in_thread(
    scope: Scope, receive: Receive, send: Send, *, handle: Handle, max_body: int
) -> None:
    """:func:`serve_json` for a service answering errors as ``{"error": {code, message}}`` whose synchronous
    ``handle`` runs in a worker thread: verification and signing are CPU-bound and must not stall the
    event loop (co-signing stays responsive while a verification runs)."""
    import anyio.to_thread

    async def dispatch(method: str, path: str, body: Any) -> tuple[int, Any]:
        return await anyio.to_thread.run_sync(handle, method, path, body)

    await serve_json(
        scope, receive, send, dispatch=dispatch, max_body=max_body,
        too_large={"error": {"code": "too-large", "message": "request too large"}},
        not_json=(400, {"error": {"code": "validation", "message": "body is not JSON"}}),
    )  # fmt: skip


def serve_unix(app: Any, *, socket_path: Path, mode: int, ready_file: Path | None) -> None:
    """Serve ``app`` on a Unix socket of ``mode`` (the caller checks which modes it allows) in a 0700
    directory; the socket is created 0600 (umask) and only then opened to ``mode``, never wider between."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    socket_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(socket_path))
    finally:
        os.umask(old)
    os.chmod(socket_path, mode)
    sock.listen(64)
    run_on_socket(app, sock, ready_file=ready_file, ready={"socket": str(socket_path)})


def run_on_socket(app: Any, sock: socket.socket, *, ready_file: Path | None, ready: dict[str, Any]) -> None:
    """Serve ``app`` on a bound, listening socket until interrupted; write ``ready`` (atomically, with
    this process's pid) to ``ready_file`` first, so the parent waiting on it never reads half a file."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    if ready_file is not None:
        fd, tmp = tempfile.mkstemp(dir=ready_file.parent, prefix=f".{ready_file.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({**ready, "pid": os.getpid()}, handle)
        os.replace(tmp, ready_file)
    server.run(sockets=[sock])
