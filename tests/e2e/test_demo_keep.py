"""``cyxwiz demo --keep`` (issue 15): after its summary the kept stack is quiet, and Ctrl-C stops all of it.

Runs the real demo as a newcomer would, in its own process group so that the test's SIGINT is the
terminal's Ctrl-C. The demo and everything it starts carry a marker of their own, so the check at the
end finds also the services that detached into sessions of their own (Prefect server, node agent).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests._processes import MARKER, kill_all, leftovers, settle

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

PROJECT = Path(__file__).resolve().parents[2]
READY = b"press Ctrl-C to stop them"
#: Five node heartbeats (every 2 s), each an authenticated call that is audited.
QUIET_SECONDS = 12


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out = b""
    end = time.monotonic() + timeout
    while needle not in out and time.monotonic() < end and proc.poll() is None:
        if sel.select(timeout=1):
            out += os.read(proc.stdout.fileno(), 65536)
    return out


def _drain(proc: subprocess.Popen[bytes], seconds: float) -> bytes:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sel.select(timeout=max(0.0, end - time.monotonic())):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.timeout(1200)  # about a minute on an idle 2-core machine; a loaded one takes several
def test_demo_keep_is_quiet_after_its_summary_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    # A newcomer's shell: none of the settings this test session gave itself (its own Prefect server).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CYXWIZ_"))}
    env.update({MARKER: marker, "COLUMNS": "200"})
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("cyxwiz")),
            "demo",
            "--keep",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        summary = _read_until(proc, READY, timeout=900)
        assert READY in summary, summary.decode(errors="replace")[-3000:]
        assert b"audit verify: OK" in summary
        assert b"verification PASS" in summary
        assert leftovers(marker), "the kept stack should still be running"

        after = _drain(proc, QUIET_SECONDS)
        assert after == b"", after.decode(errors="replace")[-3000:]
        assert proc.poll() is None

        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the whole foreground group
        proc.wait(timeout=90)
        assert settle(marker, grace=15) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_all(leftovers(marker))
