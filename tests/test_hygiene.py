"""The suite's own hygiene (issue 15): processes the session starts are found, also once detached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from tests._processes import MARKER, kill_all, leftovers, settle

# A child that detaches (new session, parent exits) the way daemons do, leaving a sleeping grandchild.
DAEMON = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
print(os.getpid(), flush=True)
time.sleep(60)
"""


def _detached(env: dict[str, str]) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", DAEMON], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.wait(timeout=10)
    return pid


def test_a_detached_daemon_of_the_session_is_found_and_killed() -> None:
    session = uuid.uuid4().hex
    pid = _detached({**os.environ, MARKER: session})
    try:
        assert [p.pid for p in leftovers(session)] == [pid]
    finally:
        kill_all(leftovers(session))
    assert settle(session, grace=5) == []


def test_a_process_of_another_session_is_not_ours() -> None:
    """Positive control: a process with no marker of this session (already running) is left alone."""
    session = uuid.uuid4().hex
    pid = _detached({**os.environ, MARKER: "someone-else"})
    try:
        assert leftovers(session) == []
    finally:
        os.kill(pid, 9)


def test_an_attached_child_counts_without_the_marker() -> None:
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        time.sleep(0.2)
        assert proc.pid in [p.pid for p in leftovers(uuid.uuid4().hex, root=os.getpid())]
        assert proc.pid not in [p.pid for p in leftovers(uuid.uuid4().hex)]  # marker only: not ours
    finally:
        proc.kill()
        proc.wait()
