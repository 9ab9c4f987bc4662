"""JSON over HTTP/1.1 on a trusted service's Unix socket (the verifier, the issuer): a connection a thread.

Every escrow release and refund waits on one co-signing call, and a control plane runs many lifecycles at
once. A single pooled client shared by those threads spent more CPU finding a free connection than the
request took (httpx's pool is scanned under one lock on every request: 3 ms a call at 8 in flight against
0.5 ms alone), so each calling thread keeps its own keep-alive connection (the stdlib's ``http.client``).
An idle connection the service closed (restart, idle timeout) reads EOF; it is dropped and reopened before
the next request, as a pooled client does, so a request is never sent twice.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from pathlib import Path
from typing import Any


class ServiceUnreachable(Exception):
    """The request got no parsable answer (connection refused or lost, not HTTP, not JSON); whether the
    service acted on it is unknown. ``args[0]`` names the failure's type; each client raises its own error."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, *, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def closed_by_peer(self) -> bool:
        """An idle keep-alive connection is readable only when the service closed it (EOF)."""
        if self.sock is None:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))


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
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
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
