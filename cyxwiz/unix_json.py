"""JSON over HTTP/1.1 on a trusted service's Unix socket (the verifier, the issuer): a connection a thread.

Every escrow release and refund waits on one co-signing call, and a control plane runs many lifecycles at
once. A single pooled client shared by those threads spent more CPU finding a free connection than the
request took (httpx's pool is scanned under one lock on every request: 3 ms a call at 8 in flight against
0.5 ms alone), so each calling thread keeps its own keep-alive connection. The services answer in one
framing only (:mod:`cyxwiz.unix_json_server`: a status line, short headers, ``content-length``), so the
client reads just that, without ``http.client``'s general header parser (a third of the call's CPU).
An idle connection the service closed (restart, idle timeout) reads EOF; it is dropped and reopened before
the next request, as a pooled client does, so a request is never sent twice.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from pathlib import Path
from typing import Any

#: the longest status or header line read from a service; our services send a few short ones
MAX_LINE = 16 << 10


class ServiceUnreachable(Exception):
    """The request got no parsable answer (connection refused or lost, not HTTP, not JSON); whether the
    service acted on it is unknown. ``args[0]`` names the failure's type; each client raises its own error."""


class MalformedHttp(ValueError):
    """The request or its answer is not the HTTP/1.1 this client speaks (status line, length, body)."""


class _UnixConnection:
    """One keep-alive HTTP/1.1 connection, opened on first use. The services answer every request with
    ``content-length`` (:mod:`cyxwiz.unix_json_server`), so a response is a status line, headers and
    exactly that many bytes; anything else is a malformed answer."""

    def __init__(self, socket_path: Path, *, timeout: float) -> None:
        self.socket_path, self.timeout = socket_path, timeout
        self.sock: socket.socket | None = None
        self._rfile: Any = None

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self._connect()
        assert self.sock is not None
        self.sock.sendall(request)
        status_line = self._line()
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit():
            raise MalformedHttp("status line")
        length, keep = None, version == b"HTTP/1.1"
        while line := self._line():
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep = False
        if length is None or length < 0:
            raise MalformedHttp("content-length")
        body = self._rfile.read(length)
        if len(body) != length:
            raise MalformedHttp("truncated body")
        if not keep:
            self.close()
        return int(code), body

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock, self._rfile = sock, sock.makefile("rb")

    def _line(self) -> bytes:
        line: bytes = self._rfile.readline(MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("the service closed the connection without an answer")
        if not line.endswith(b"\n") or len(line) > MAX_LINE:
            raise MalformedHttp("line")
        return line.rstrip(b"\r\n")

    def closed_by_peer(self) -> bool:
        """An idle keep-alive connection is readable only when the service closed it (EOF)."""
        if self.sock is None:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))

    def close(self) -> None:
        sock, rfile, self.sock, self._rfile = self.sock, self._rfile, None, None
        if rfile is not None:
            rfile.close()
        if sock is not None:
            sock.close()


def _request_bytes(method: str, path: str, body: dict[str, Any] | None) -> bytes:
    """The request's bytes: one write. A path with a control character, a space or a non-ASCII one would
    change the request's framing; it is refused as ``http.client`` refuses it."""
    target = path.encode("ascii")  # UnicodeEncodeError is a ValueError: unreachable, nothing sent
    if not method.isalpha() or any(b <= 0x20 or b == 0x7F for b in target):
        raise MalformedHttp("request target")
    if body is None:
        return b"%s %s HTTP/1.1\r\nhost: localhost\r\n\r\n" % (method.encode(), target)
    data = json.dumps(body).encode()
    return (
        b"%s %s HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (method.encode(), target, len(data), data)
    )


class UnixJsonClient:
    """``request(method, path, body) -> (status, parsed JSON)``; safe to share across threads."""

    def __init__(self, socket_path: Path, *, timeout_s: float) -> None:
        self.socket_path = socket_path
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_UnixConnection] = []
        self._generation = 0  # bumped by close(): threads then open fresh connections

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        connection = self._connection()
        try:
            status, data = connection.exchange(_request_bytes(method, path, body))
            return status, json.loads(data)
        except (OSError, ValueError) as exc:
            connection.close()
            raise ServiceUnreachable(type(exc).__name__) from None

    def _connection(self) -> _UnixConnection:
        generation, connection = getattr(self._local, "connection", (-1, None))
        if connection is None or generation != self._generation:
            connection = _UnixConnection(self.socket_path, timeout=self._timeout_s)
            with self._lock:
                self._connections.append(connection)
                self._local.connection = (self._generation, connection)
        elif connection.closed_by_peer():
            connection.close()  # reopened by the next request
        return connection

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        for connection in connections:
            connection.close()
