"""Job bridge client used *inside* the sandbox (pure stdlib: nothing else is trusted to be there).

    from cyxwiz.sandbox.bridge_client import BridgeClient
    bridge = BridgeClient.from_env()          # socket path from $CYXWIZ_BRIDGE
    bridge.hello("job-123")
    bridge.progress(10, 100)
    bridge.metrics(10, {"loss": 0.42})
    bridge.checkpoint(10, weights_sha256=..., batch_indices_sha256=..., path="ckpt/step10.pt")
    info = bridge.request_file("data/train.npz")   # {"kind": "file", "size": ..., "sha256": ...}
    bridge.close()

Sends are fire-and-forget; the host answers ``file_request`` (a ``file`` line, or an ``error`` line
carrying the same ``path``) and refused lines (``error`` lines that :meth:`request_file` skips).
"""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Any

VERSION = 1
MAX_LINE = 64 * 1024
ENV_VAR = "CYXWIZ_BRIDGE"


class BridgeClientError(Exception):
    """The bridge refused a request or is unreachable."""


class BridgeClient:
    def __init__(self, *, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._rfile = self._sock.makefile("rb")

    @classmethod
    def from_env(cls, *, timeout: float = 30.0) -> BridgeClient:
        path = os.environ.get(ENV_VAR)
        if not path:
            raise BridgeClientError(f"{ENV_VAR} is not set: not running in a cyxwiz sandbox")
        return cls(path=path, timeout=timeout)

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"v": VERSION, "kind": kind, **fields}, separators=(",", ":"), allow_nan=False)
        data = line.encode("utf-8") + b"\n"
        if len(data) > MAX_LINE:
            raise BridgeClientError(f"message longer than {MAX_LINE} bytes")
        self._sock.sendall(data)

    def hello(self, job_id: str) -> None:
        self.send("hello", job_id=job_id)

    def progress(self, step: int, total: int) -> None:
        self.send("progress", step=int(step), total=int(total))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        clean = {str(k): float(v) for k, v in values.items()}
        if not all(math.isfinite(v) for v in clean.values()):
            raise BridgeClientError("metric values must be finite")
        self.send("metrics", step=int(step), values=clean)

    def checkpoint(self, step: int, weights_sha256: str, batch_indices_sha256: str, path: str) -> None:
        self.send(
            "checkpoint",
            step=int(step),
            weights_sha256=weights_sha256,
            batch_indices_sha256=batch_indices_sha256,
            path=path,
        )

    def request_file(self, path: str) -> dict[str, Any]:
        """Ask the host for the size and SHA-256 of an input file; raises on a refusal."""
        self.send("file_request", path=path)
        while True:
            raw = self._rfile.readline(MAX_LINE + 1)
            if not raw:
                raise BridgeClientError("bridge closed the connection")
            reply = json.loads(raw)
            if reply.get("kind") == "file" and reply.get("path") == path:
                return dict(reply)
            if reply.get("kind") == "error" and reply.get("path") == path:
                raise BridgeClientError(f"{reply.get('code')}: {reply.get('message')}")
            # anything else answers an earlier fire-and-forget line: skip it

    def close(self) -> None:
        try:
            self._rfile.close()
        finally:
            self._sock.close()

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
