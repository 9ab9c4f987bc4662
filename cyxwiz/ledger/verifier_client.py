"""The control plane's client of the verifier service: HTTP/1.1 over its Unix socket, one connection a thread.

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

from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.errors import LedgerError
from cyxwiz.ledger.cosign import CosignRequest, refusal_from


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, *, timeout: float) -> None:
        super().__init__("verifier", timeout=timeout)
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


class RemoteCosigner:
    """The control plane's side: asks the verifier service over its Unix socket."""

    def __init__(self, *, socket_path: Path, pubkey: Pubkey | None = None, timeout_s: float = 600.0) -> None:
        self.socket_path = socket_path
        self._timeout_s = timeout_s
        self._pubkey = pubkey
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_UnixConnection] = []
        self._generation = 0  # bumped by close(): threads then open fresh connections

    def pubkey(self) -> Pubkey:
        if self._pubkey is None:
            self._pubkey = Pubkey.from_string(str(self._call("GET", "/v1/pubkey")["pubkey"]))
        return self._pubkey

    def cosign(self, request: CosignRequest) -> Signature:
        return Signature.from_string(str(self._call("POST", "/v1/cosign", request.to_dict())["signature"]))

    def passing(self, job_id: str) -> str | None:
        """The passing attestation the verifier service recorded for the job, if any."""
        value = self._call("GET", f"/v1/verdicts/{job_id}").get("attestation")
        return None if value is None else str(value)

    def verify(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run the verification in the verifier service: ``{"report": ..., "attestation": json}``."""
        return self._call("POST", "/v1/verify", body)

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

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        connection = self._connection()
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            status, payload = response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            connection.close()
            from cyxwiz.ledger.rpc import LedgerUnavailableError

            raise LedgerUnavailableError(
                f"the verifier service at {self.socket_path} is unreachable ({type(exc).__name__})", rule="F1"
            ) from None
        if status != 200:
            raise refusal_from(payload.get("error") if isinstance(payload, dict) else None)
        if not isinstance(payload, dict):
            raise LedgerError("the verifier service answered garbage", field="body")
        return payload

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        for connection in connections:
            connection.close()
