"""The watchdog shared by every backend (SPEC E2): wall time, output size and log volume, with a reason.

A backend hands over callables to poll and kill its job and feeds the job's stdout/stderr into
:class:`LogTail`; :func:`supervise` decides when to kill and which limit was hit. It never trusts the
job: the reason comes from what the host measured, not from anything the job said.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from cyxwiz.sandbox.limits import JobLimits
from cyxwiz.sandbox.workdir import JobDir

TAIL_BYTES = 64 * 1024
_POLL_S = 0.05
_OUTPUT_POLL_S = 0.25


class LogTail:
    """Keeps the last ``TAIL_BYTES`` of a stream and counts every byte (for the log cap)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.total = 0
        self._lock = threading.Lock()

    def feed(self, chunk: bytes) -> None:
        with self._lock:
            self.total += len(chunk)
            self._buf += chunk
            if len(self._buf) > 2 * TAIL_BYTES:
                del self._buf[:-TAIL_BYTES]

    def text(self) -> str:
        with self._lock:
            return bytes(self._buf[-TAIL_BYTES:]).decode("utf-8", "replace")

    def drain(self, stream: IO[bytes]) -> threading.Thread:
        def pump() -> None:
            while True:
                try:
                    chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                except (OSError, ValueError):
                    break
                if not chunk:
                    break
                self.feed(chunk)

        t = threading.Thread(target=pump, name="sandbox-log", daemon=True)
        t.start()
        return t


@dataclass
class Verdict:
    """What the watchdog saw: the limit it enforced (if any) and how long the job ran."""

    killed_for: str | None = None  # "wall_time" | "output_bytes" | "log_bytes"
    wall_seconds: float = 0.0
    output_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def supervise(
    *,
    wait: Callable[[float], bool],
    kill: Callable[[], None],
    limits: JobLimits,
    job: JobDir,
    logs: tuple[LogTail, LogTail],
    started: float,
) -> Verdict:
    """Block until the job ends or a limit is crossed (then kill the whole tree and wait for it).

    ``wait(t)`` blocks up to ``t`` seconds and says whether the job has ended: waiting on the process
    (not sleeping) keeps the sandbox's start-to-exit overhead low.
    """
    verdict = Verdict()
    next_output_check = started + _OUTPUT_POLL_S
    deadline = started + limits.wall_seconds
    while not wait(0):
        now = time.monotonic()
        if now >= deadline:
            verdict.killed_for = "wall_time"
        elif logs[0].total + logs[1].total > limits.log_bytes:
            verdict.killed_for = "log_bytes"
        elif now >= next_output_check:
            next_output_check = now + _OUTPUT_POLL_S
            if job.output_size(cap=limits.output_bytes) > limits.output_bytes:
                verdict.killed_for = "output_bytes"
        if verdict.killed_for:
            kill()
            end = time.monotonic() + 10
            while not wait(_POLL_S) and time.monotonic() < end:
                kill()  # processes forked in the meantime
            break
        wait(min(_POLL_S, max(0.0, deadline - now)))
    verdict.wall_seconds = time.monotonic() - started
    verdict.output_bytes = job.output_size()
    if verdict.killed_for is None and verdict.output_bytes > limits.output_bytes:
        verdict.killed_for = "output_bytes"  # written between the last poll and the exit
    return verdict
