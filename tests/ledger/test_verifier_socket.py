"""Who can reach the verifier service's socket (issue 17; F1, I).

In production the verifier runs as ``cyxwiz-verifier`` with primary group ``cyxwiz-escrow`` and serves
``--socket-mode 660`` in its 0750 runtime directory; the control worker's account is the group's only
other member. The coordinator's account, which faces nodes and users, cannot even connect, so it can
neither ask for a co-signature nor probe the service. Real processes under real uids (root only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyxwiz.errors import ValidationError
from cyxwiz.ledger.verifier_service import serve
from tests._accounts import PROJECT, launcher, require_other_accounts, run_as

VERIFIER, CONTROL, COORDINATOR = 65521, 65522, 65523
ESCROW, DATA = 65530, 65531  # the verifier socket's group; the audit/store group (no escrow rights)

SERVE = """
import pathlib, sys, time
import cyxwiz.unix_json_server as server
import cyxwiz.ledger.verifier_service as service

def hold(_server, *, ready_file, ready):  # the socket as bound and chmod'ed; no service behind it
    pathlib.Path(sys.argv[2]).write_text("ready")
    time.sleep(120)

server.run_on_socket = hold  # serve_unix binds, chmods and listens, then hands over here
service.serve(None, socket_path=pathlib.Path(sys.argv[1]), mode=int(sys.argv[3], 8))
"""

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected")
"""


@pytest.fixture
def socket_path() -> Iterator[Path]:
    require_other_accounts(COORDINATOR)
    root = Path(tempfile.mkdtemp(prefix="cyxwiz-verifier-sock-"))
    root.chmod(0o711)
    run = root / "cyxwiz-verifier"  # RuntimeDirectory=cyxwiz-verifier, RuntimeDirectoryMode=0750
    run.mkdir(mode=0o750)
    os.chown(run, VERIFIER, ESCROW)
    path = run / "verifier.sock"
    argv = [sys.executable, "-c", SERVE, str(path), str(run / "ready"), "660"]
    proc = subprocess.Popen(
        [*launcher(VERIFIER, [], gid=ESCROW), *argv],
        cwd="/", env={"PYTHONPATH": str(PROJECT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (run / "ready").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the verifier socket never came up"
            time.sleep(0.05)
        yield path
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_only_the_control_workers_account_can_connect_to_the_verifier(socket_path: Path) -> None:
    st = socket_path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (VERIFIER, ESCROW, 0o660)
    control = run_as(CONTROL, [ESCROW], CONNECT, str(socket_path))
    assert control.returncode == 0 and "connected" in control.stdout, control.stderr[-800:]
    coordinator = run_as(COORDINATOR, [DATA], CONNECT, str(socket_path))
    assert coordinator.returncode != 0
    assert "PermissionError" in coordinator.stderr, coordinator.stderr[-800:]


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o640, 0o700])
def test_the_socket_is_never_opened_to_others(tmp_path: Path, mode: int) -> None:
    with pytest.raises(ValidationError, match="0600 or 0660") as caught:
        serve(None, socket_path=tmp_path / "verifier.sock", mode=mode)  # type: ignore[arg-type]
    assert caught.value.field == "socket_mode"
    assert not (tmp_path / "verifier.sock").exists()
