"""Training progress to the coordinator without ever holding up the training (issue 21).

The job bridge hands each message to the flow as it arrives, on the thread that reads the job's socket.
Sending there would stall the job for as long as the coordinator is away (a restart: tens of seconds of
retries) and a failed send would drop the bridge connection. Progress is a latest-value report, so a
background thread sends only the newest one, retrying across a restart like every other call of the
run (:mod:`cyxwiz.retry`); reports that arrive meanwhile replace the pending one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("cyxwiz.agent.progress")


class ProgressRelay:
    """Sends the newest offered progress message through ``send`` on its own thread; a context manager."""

    def __init__(self, *, send: Callable[[dict[str, Any]], None]) -> None:
        self._send = send
        self._pending: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-relay", daemon=True)

    def start(self) -> ProgressRelay:
        self._thread.start()
        return self

    def offer(self, message: dict[str, Any]) -> None:
        """Never blocks: the message replaces any report not sent yet."""
        with self._lock:
            self._pending = dict(message)
        self._wake.set()

    def close(self, *, flush_s: float = 5.0) -> None:
        """Send what is pending if that takes no longer than ``flush_s``; a report still retrying after
        that is given up (the proof that follows carries the outcome, progress is only advice)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=flush_s)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                message, self._pending = self._pending, None
            if message is not None:
                try:
                    self._send(message)
                except Exception as exc:  # a report that could not go out is advice lost, not a failed job
                    _log.warning("progress report not delivered: %s", exc)
            if self._closing.is_set() and self._pending is None:
                return

    def __enter__(self) -> ProgressRelay:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
