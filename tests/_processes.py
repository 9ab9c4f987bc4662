"""What a test session leaves running: every process it started, found by a marker in the environment.

Each process the session starts inherits ``CYXWIZ_TEST_SESSION`` (also daemons that detach from their
parent: dockerd's containerd, PostgreSQL's postmaster, Prefect servers), so a scan of ``/proc`` finds them
after the parent-child links are gone. A process the session found already running carries no marker and
is never reported. Descendants still attached to the test process count too, marker or not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "CYXWIZ_TEST_SESSION"


@dataclass(frozen=True)
class Leftover:
    pid: int
    cmdline: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.cmdline}"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a live process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _carries(pid: int, token: bytes) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return token in environ.split(b"\0")


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200] or "?"


def leftovers(session: str, *, root: int | None = None) -> list[Leftover]:
    """Live (not zombie) processes started by ``session``: marked ones, and descendants of ``root`` when
    given (the test process itself, whose own fixtures' servers are not a single test's leftovers)."""
    token = f"{MARKER}={session}".encode()
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if pid == root or stat is None or stat[0] == "Z":
            continue
        parents[pid] = stat[1]
        if _carries(pid, token):
            found.add(pid)
    for pid in parents if root is not None else ():
        seen: set[int] = set()
        cur = parents.get(pid)
        while cur is not None and cur not in seen:
            if cur == root:
                found.add(pid)
                break
            seen.add(cur)
            cur = parents.get(cur)
    return [Leftover(pid, _cmdline(pid)) for pid in sorted(found)]


def settle(session: str, *, root: int | None = None, grace: float = 10.0) -> list[Leftover]:
    """What is still running after ``grace`` seconds for processes that are already on their way out."""
    end = time.monotonic() + grace
    left = leftovers(session, root=root)
    while left and time.monotonic() < end:
        time.sleep(0.25)
        left = leftovers(session, root=root)
    return left


def kill_all(procs: list[Leftover]) -> None:
    for proc in procs:
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)
