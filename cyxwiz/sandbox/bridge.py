"""Job bridge, host side (SPEC E4–E6): one 0600 Unix socket per job, a strict line protocol.

The server records every accepted message (``messages``) and every refused one (``errors``), answers
``file_request`` with the size and SHA-256 of a file under the job's input dir (else its output dir),
and checks every path with :mod:`cyxwiz.sandbox.paths`. Nothing received here is ever given to a shell
or used as anything but data (E6).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cyxwiz.errors import CyxwizError
from cyxwiz.sandbox import protocol
from cyxwiz.sandbox.paths import open_confined
from cyxwiz.sandbox.protocol import MAX_LINE, ProtocolError

MAX_MESSAGES = 100_000
#: Bytes of accepted lines kept in memory per job (100k lines of 64 KiB would be 6 GB).
MAX_RECORDED_BYTES = 16 * 1024 * 1024
MAX_ERRORS = 1_000
MAX_CONNECTIONS = 16
MAX_FILE_BYTES = 1 << 40


class BridgeServer:
    def __init__(
        self,
        *,
        socket_path: Path,
        output_dir: Path,
        input_dir: Path | None = None,
        owner: tuple[int, int] | None = None,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.output_dir = Path(output_dir)
        self.files_root = Path(input_dir) if input_dir is not None else self.output_dir
        self.owner = owner
        self.on_message = on_message
        self.messages: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self._recorded_bytes = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stopping = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> BridgeServer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            sock.bind(str(self.socket_path))
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        if self.owner is not None and os.geteuid() == 0:
            os.chown(self.socket_path, *self.owner)  # the job's uid must be able to connect
        sock.listen(MAX_CONNECTIONS)
        sock.settimeout(0.05)  # how fast stop() notices; accept() wakes up this often
        self._sock = sock
        t = threading.Thread(target=self._accept_loop, name="bridge-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() at once
        # A job may have written its last lines just before exiting: let the readers drain them.
        deadline = time.monotonic() + 2
        for t in list(self._threads):
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.close()
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving ------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None
        accepted = 0
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted += 1
            if accepted > MAX_CONNECTIONS * 4:
                conn.close()  # a job reconnecting in a loop gets nothing more
                continue
            conn.settimeout(0.2)
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="bridge-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        discarding = False  # inside an over-long line: drop bytes until its newline
        idle_after_stop = 0
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    if self._stopping.is_set():
                        idle_after_stop += 1
                        if idle_after_stop > 2:
                            return
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_LINE:
                            if not discarding:
                                self._refuse(conn, ProtocolError("line too long", reply_code="too-large"))
                            discarding = True
                            buf.clear()
                        break
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if discarding:
                        discarding = False
                        continue
                    self._handle(conn, line)

    def _refuse(self, conn: socket.socket, exc: CyxwizError, *, path: str | None = None) -> None:
        code = exc.reply_code if isinstance(exc, ProtocolError) else exc.code
        with self._lock:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append({"code": code, "message": exc.message, "field": exc.field})
        with contextlib.suppress(OSError):
            conn.sendall(protocol.error_reply(code, exc.message, path=path))

    def _handle(self, conn: socket.socket, line: bytes) -> None:
        if not line.strip():
            return
        msg: dict[str, Any] = {}
        try:
            msg = protocol.parse_line(line)
            if msg["kind"] == "checkpoint":
                fd = open_confined(self.output_dir, msg["path"], field="path")
                os.close(fd)
            elif msg["kind"] == "file_request":
                conn.sendall(self._file_reply(msg["path"]))
            with self._lock:
                if (
                    len(self.messages) >= MAX_MESSAGES
                    or self._recorded_bytes + len(line) > MAX_RECORDED_BYTES
                ):
                    raise ProtocolError("too many messages", reply_code="too-many")
                self._recorded_bytes += len(line)
                self.messages.append(msg)
        except CyxwizError as exc:
            ref = msg.get("path") if msg.get("kind") == "file_request" else None
            self._refuse(conn, exc, path=ref if isinstance(ref, str) else None)
            return
        except OSError:
            return
        if self.on_message is not None:
            self.on_message(dict(msg))

    def _file_reply(self, raw_path: str) -> bytes:
        fd = open_confined(self.files_root, raw_path, field="path", max_bytes=MAX_FILE_BYTES)
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return protocol.encode(
            {
                "v": protocol.VERSION,
                "kind": "file",
                "path": raw_path,
                "size": size,
                "sha256": digest.hexdigest(),
            }
        )
