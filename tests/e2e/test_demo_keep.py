"""``cyxwiz demo --keep --hsm`` (issues 15, 22): after its summary the kept stack is quiet, and Ctrl-C stops
all of it; with ``--hsm`` the whole lifecycle ran with the CA, token, audit and escrow keys in SoftHSM2.

Runs the real demo as a newcomer would, in its own process group so that the test's SIGINT is the
terminal's Ctrl-C. The demo and everything it starts carry a marker of their own, so the check at the
end finds also the services that detached into sessions of their own (Prefect server, node agent).
While the stack is kept, ``cyxwiz token rotate`` rotates the coordinator's token-held signing ring: the new
key is made inside the token and the ring directory stays ``ring.json`` only (A7, B4).
"""

from __future__ import annotations

import json
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

pytestmark = [pytest.mark.slow, pytest.mark.ci, pytest.mark.prefect]

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


def _rotate_in_the_token(home: Path, env: dict[str, str]) -> None:
    """The demo's signing ring rotates inside the token: a new pkcs11: key, no key file (A7, B4)."""
    import json

    ring = home / "coordinator" / "keyring"
    kids = lambda: [k["kid"] for k in json.loads((ring / "ring.json").read_text())["keys"]]  # noqa: E731
    before = kids()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cyxwiz")), "token", "rotate", str(ring), "--force"],
        env={**env, "SOFTHSM2_CONF": str(home / "hsm" / "softhsm2.conf")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and "rotated" in done.stdout, done.stdout + done.stderr
    assert len(kids()) == len(before) + 1
    assert sorted(p.name for p in ring.iterdir()) == ["ring.json"]  # never a key file
    records = json.loads((ring / "ring.json").read_text())["keys"]
    assert all(str(r.get("uri", "")).startswith("pkcs11:") for r in records), records


def _user_shell_reaches_the_kept_stack(env_file: Path, env: dict[str, str]) -> None:
    """The README's user shell (issue 16): ``. .demo/user.env`` then ``cyxwiz job``: the demo user's own
    certificate and wallet reach the kept coordinator, which shows that user's wallet only."""
    assert env_file.stat().st_mode & 0o077 == 0, oct(env_file.stat().st_mode)
    cyxwiz = str(Path(sys.executable).with_name("cyxwiz"))
    shell = subprocess.run(
        ["bash", "-c", '. "$1" && "$2" job wallet --json', "user-shell", str(env_file), cyxwiz],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shell.returncode == 0, (shell.stdout[-2000:], shell.stderr[-2000:])
    view = json.loads(shell.stdout)
    assert view["user_id"] == "demo-user" and len(view["wallets"]) == 1, view


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
            "--hsm",
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
        assert b"escrow released" in summary
        assert b"Keys inside the SoftHSM2 token" in summary and b"escrow arbiter key" in summary
        assert leftovers(marker), "the kept stack should still be running"

        after = _drain(proc, QUIET_SECONDS)
        assert after == b"", after.decode(errors="replace")[-3000:]
        assert proc.poll() is None
        _rotate_in_the_token(tmp_path / "demo", env)
        _user_shell_reaches_the_kept_stack(tmp_path / "demo" / "user.env", env)

        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the whole foreground group
        proc.wait(timeout=90)
        assert settle(marker, grace=15) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_all(leftovers(marker))
