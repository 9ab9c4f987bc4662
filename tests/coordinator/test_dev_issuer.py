"""``cyxwiz serve coordinator --dev --pki-dir``: even in development the CA key stays out of the coordinator
process — the dev CA gets its own issuer service as a child process, stopped with it (issue 17; A7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.local_server import free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_dev_coordinator_runs_the_dev_ca_in_its_own_issuer_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "cyxwiz.cli", "serve", "coordinator", "--dev", "--pki-dir",
            str(tmp_path / "pki"), "--state-dir", str(state), "--port", str(free_port())]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = state / "issuer" / "issuer.ready.json"
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        issuer_pid = int(json.loads(ready.read_text())["pid"])
        assert issuer_pid != proc.pid and _alive(issuer_pid)
        assert (state / "issuer" / "issuer.sock").is_socket()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "DEVELOPMENT MODE" in err
    deadline = time.monotonic() + 15
    while _alive(issuer_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(issuer_pid), "the issuer stops with the dev coordinator"
