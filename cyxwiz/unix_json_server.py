"""The server side of :mod:`cyxwiz.unix_json`: the verifier's and the issuer's HTTP/1.1 on their Unix socket.

Every escrow release waits on one co-signing call, so the transport's CPU is paid on every release. An
asyncio server (uvicorn, h11, ASGI, then a hop to a worker thread so that a CPU-bound verification never
stalls co-signing) cost about as much CPU as the co-signing rules themselves. Here each connection is
served by a thread of its own that reads a request, runs the synchronous handler and writes the answer:
no event loop, no hop. A verification on one connection still leaves co-signing on the others responsive,
and the callers keep one connection per thread (:class:`~cyxwiz.unix_json.UnixJsonClient`).

The socket is plumbing between trusted processes, but the parser still refuses what it does not take
(chunked bodies are read, anything else malformed is answered 400 and the connection closed). Errors are
JSON ``{"error": {code, message}}``; a handler that crashes answers a plain-text 500 as uvicorn did, which
the clients read as "unreachable, outcome unknown", never as a refusal. SIGTERM (or SIGINT) stops
accepting, wakes idle connections, lets requests in progress answer, and returns.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote


class JsonService(Protocol):
    """What a socket serves: its synchronous ``handle``, run in the connection's thread."""

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """(method, path, the parsed JSON body or None) -> (HTTP status, JSON payload)."""
        ...


#: an idle keep-alive connection is closed after this long, as uvicorn did (its clients reopen one)
KEEP_ALIVE_S = 5.0
MAX_LINE = 16 << 10
MAX_HEADERS = 100
#: Connections served at once, each by its own thread. The callers keep one per thread (a control
#: plane's lifecycles, the coordinator's request threads); past this a peer that opens and holds
#: connections (a compromised coordinator on the issuer's socket) gets its extra ones closed, not a
#: thread each.
MAX_CONNECTIONS = 512
TOO_LARGE = {"error": {"code": "too-large", "message": "request too large"}}
NOT_JSON = {"error": {"code": "validation", "message": "body is not JSON"}}
_CRASHED = b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n" \
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"  # fmt: skip


_FRAMING = (b"content-length", b"transfer-encoding", b"connection")
_HEX = re.compile(rb"[0-9a-fA-F]{1,8}")


#: accept() failures that pass (a client gave up, descriptors or memory ran out for a moment)
_TRANSIENT = {errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPROTO}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refused(Exception):
    """The request is answered ``status``/``payload`` and the connection closed (its framing is lost)."""

    def __init__(self, status: int, message: str, payload: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.payload = payload or {"error": {"code": "validation", "message": message}}


class _Stop(Exception):
    """Raised in the main thread by SIGTERM or SIGINT: stop accepting."""


def _head(line: bytes) -> bytes:
    if len(line) > MAX_LINE:
        raise _Refused(431, "request head too large")
    if not line.endswith(b"\n"):
        raise EOFError  # the connection ended mid-line
    return line.rstrip(b"\r\n")


def read_request(
    rfile: BinaryIO, *, max_body: int, proceed: Callable[[], None] = lambda: None
) -> tuple[str, str, bytes, bool] | None:
    """(method, path, body, keep the connection open) of the next request; ``None`` at a clean EOF.
    ``proceed`` sends ``100 Continue`` to a client that waits for it before its body (curl does)."""
    line = rfile.readline(MAX_LINE + 1)
    if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: an empty line before a request is ignored
        line = rfile.readline(MAX_LINE + 1)
    if not line:
        return None
    parts = _head(line).split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0].isalpha():
        raise _Refused(400, "malformed request line")
    method, target, version = parts
    headers: dict[bytes, bytes] = {}
    for _ in range(MAX_HEADERS + 1):
        field = _head(rfile.readline(MAX_LINE + 1))
        if not field:
            break
        name, colon, value = field.partition(b":")
        name = name.lower()
        if not colon or not name or name != name.strip() or (name in _FRAMING and name in headers):
            raise _Refused(400, "malformed header, or a repeated one that frames the body")
        headers.setdefault(name, value.strip())
    else:
        raise _Refused(431, "too many headers")
    keep = b"close" not in headers.get(b"connection", b"").lower() and version == b"HTTP/1.1"
    try:
        path = unquote(target.partition(b"?")[0].decode("ascii"))
    except UnicodeDecodeError:
        raise _Refused(400, "malformed request target") from None
    return method.decode(), path, _body(rfile, headers, max_body=max_body, proceed=proceed), keep


def _body(
    rfile: BinaryIO, headers: dict[bytes, bytes], *, max_body: int, proceed: Callable[[], None]
) -> bytes:
    length, coding = headers.get(b"content-length"), headers.get(b"transfer-encoding")
    expects = headers.get(b"expect", b"").lower() == b"100-continue"
    if coding is not None:
        if length is not None or coding.lower() != b"chunked":
            raise _Refused(400, "unsupported transfer-encoding")
        if expects:
            proceed()
        return _chunked(rfile, max_body=max_body)
    if length is None:
        return b""
    if not length.isdigit():
        raise _Refused(400, "malformed content-length")
    if int(length) > max_body:
        raise _Refused(413, "request too large", TOO_LARGE)  # before any 100: the body is never sent
    if expects and int(length):
        proceed()
    body = rfile.read(int(length))
    if len(body) != int(length):
        raise EOFError
    return body


def _chunked(rfile: BinaryIO, *, max_body: int) -> bytes:
    body = b""
    while True:
        size_text = _head(rfile.readline(MAX_LINE + 1)).partition(b";")[0].strip()
        if not _HEX.fullmatch(size_text):  # int(..., 16) alone takes "-1" and "0x1"
            raise _Refused(400, "malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            while _head(rfile.readline(MAX_LINE + 1)):
                pass  # trailers are ignored
            return body
        if len(body) + size > max_body:
            raise _Refused(413, "request too large", TOO_LARGE)
        chunk = rfile.read(size + 2)
        if len(chunk) != size + 2:
            raise EOFError
        body += chunk[:size]


def answer(status: int, payload: Any, *, keep: bool) -> bytes:
    """The whole HTTP/1.1 response: one write."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    closing = b"" if keep else b"connection: close\r\n"
    head = f"HTTP/1.1 {status} {_PHRASES.get(status, '')}\r\ncontent-type: application/json\r\n"
    return b"%scontent-length: %d\r\n%s\r\n%s" % (head.encode(), len(body), closing, body)


_PHRASES = {s.value: s.phrase for s in HTTPStatus}


class JsonServer:
    """Serves ``service`` on a bound, listening socket, a thread per connection, until :meth:`stop`."""

    def __init__(
        self,
        service: JsonService,
        sock: socket.socket,
        *,
        max_body: int,
        max_connections: int | None = None,
    ) -> None:
        self.service, self.sock, self.max_body = service, sock, max_body
        self.max_connections = max_connections or MAX_CONNECTIONS
        self._lock = threading.Lock()
        self._open: dict[socket.socket, bool] = {}  # connection -> a request is being answered
        self._threads: set[threading.Thread] = set()
        self._stopping = False
        self._refused = 0

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    raise
                print(f"accept failed, still serving: {exc}", file=sys.stderr, flush=True)
                time.sleep(0.1)  # out of descriptors or memory: the clients' connections wait meanwhile
                continue
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                if len(self._open) >= self.max_connections:
                    conn.close()  # the client reads EOF: unreachable, outcome unknown; nothing was asked
                    self._refused += 1
                    if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                        print(
                            f"{self._refused} connections refused: {self.max_connections} open",
                            file=sys.stderr, flush=True,
                        )  # fmt: skip
                    continue
                thread = threading.Thread(target=self._connection, args=(conn,), daemon=True)
                self._open[conn] = False
                self._threads.add(thread)
            thread.start()

    def stop(self) -> None:
        """Stop accepting, end idle connections, and wait for the answers in progress."""
        with self._lock:
            self._stopping = True
            for conn, busy in self._open.items():
                if not busy:
                    _shutdown_read(conn)  # wakes its thread's read with EOF
            threads = list(self._threads)
        self.sock.close()
        for thread in threads:
            if thread.ident is not None:  # started (a signal may land between adding and starting one)
                thread.join()

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(KEEP_ALIVE_S)  # idle between requests; the handler never reads the socket
        rfile = conn.makefile("rb")
        try:
            while self._one(conn, rfile):
                pass
        except (OSError, EOFError):
            pass  # the client went away or idled out: nothing to answer
        finally:
            with self._lock:
                self._open.pop(conn, None)
                self._threads.discard(threading.current_thread())
            rfile.close()
            conn.close()

    def _one(self, conn: socket.socket, rfile: BinaryIO) -> bool:
        try:
            request = read_request(rfile, max_body=self.max_body, proceed=lambda: conn.sendall(_CONTINUE))
        except _Refused as refused:
            conn.sendall(answer(refused.status, refused.payload, keep=False))
            return False
        if request is None:
            return False
        method, path, body, keep = request
        with self._lock:
            self._open[conn] = True
        try:
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                status, payload = 400, NOT_JSON
            else:
                status, payload = self.service.handle(method, path, parsed)
            response = answer(status, payload, keep=keep and not self._stopping)
        except Exception:
            traceback.print_exc(file=sys.stderr)  # into the service's log, as uvicorn did
            conn.sendall(_CRASHED)
            return False
        conn.sendall(response)
        with self._lock:
            self._open[conn] = False
            return keep and not self._stopping


def _shutdown_read(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone
        conn.shutdown(socket.SHUT_RD)


def serve_unix(
    service: JsonService, *, socket_path: Path, mode: int, max_body: int, ready_file: Path | None
) -> None:
    """Serve ``service`` on a Unix socket of ``mode`` (the caller checks which modes it allows) in a 0700
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
    server = JsonServer(service, sock, max_body=max_body)
    run_on_socket(server, ready_file=ready_file, ready={"socket": str(socket_path)})


def announce_ready(ready_file: Path | None, ready: dict[str, Any]) -> None:
    """The one place a service (the verifier, the issuer, the ledger service) says it listens: ``ready``
    and this process's pid written atomically to ``ready_file`` (the parent waiting on it never reads
    half a file), when it was given one; and ``READY=1`` to systemd under ``Type=notify``
    (:mod:`cyxwiz.sdnotify`), so a unit ordered after this one starts only once the socket listens."""
    from cyxwiz.sdnotify import notify_ready

    notify_ready(f"listening on {ready.get('socket') or ready.get('rpc_url')}")
    if ready_file is None:
        return
    fd, tmp = tempfile.mkstemp(dir=ready_file.parent, prefix=f".{ready_file.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({**ready, "pid": os.getpid()}, out)
    os.replace(tmp, ready_file)


def run_on_socket(server: JsonServer, *, ready_file: Path | None, ready: dict[str, Any]) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully and return."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise _Stop

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce_ready(ready_file, ready)
        server.serve_forever()
    except _Stop:
        pass
    finally:
        with contextlib.suppress(_Stop):  # a second signal: stop waiting for the answers in progress
            server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
