"""A small trusted service started as its own process on a Unix socket (the verifier, the issuer).

Each holds a key no other process may (the verifier's escrow share, the issuing CA's key), so each runs in
a process of its own; the embedded stack, the dev CLI and the tests start them alike: ``ARGV --socket S
--ready-file R``, wait until the service writes its ready file (or exits, whose log tail is then the
error), stop with SIGTERM and, after 10 s, SIGKILL. A new session keeps a terminal's ^C from reaching it
before its parent decides.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Self

from cyxwiz.errors import CyxwizError


class SocketServiceProcess:
    """A running service subprocess; a context manager. Subclasses name it and the error it raises."""

    #: the service's name: its files in ``state_dir`` are NAME.ready.json and NAME.log
    name = "service"

    def __init__(self, *, argv: list[str], env: dict[str, str], state_dir: Path, socket_path: Path) -> None:
        self.argv, self.env, self.state_dir, self.socket_path = argv, env, state_dir, socket_path
        self._process: subprocess.Popen[bytes] | None = None

    def error(self, message: str) -> CyxwizError:
        """The error a failed start raises (the caller's own kind)."""
        return CyxwizError(message)

    def start(self, timeout_s: float = 60.0) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ready, log_path = self.state_dir / f"{self.name}.ready.json", self.state_dir / f"{self.name}.log"
        ready.unlink(missing_ok=True)
        argv = [*self.argv, "--socket", str(self.socket_path), "--ready-file", str(ready)]
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        try:
            while not ready.exists():
                if self._process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-1500:]
                    raise self.error(f"the {self.name} service exited at start: {tail}")
                if time.monotonic() > deadline:
                    raise self.error(f"the {self.name} service did not become ready in time")
                time.sleep(0.05)
        except BaseException:
            self.stop()  # also when a signal interrupts the wait: it runs in its own session
            raise
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start() if self._process is None else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
