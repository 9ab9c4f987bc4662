"""``python -m infra.serve SERVICE --check`` (the units' ExecStartPre) refuses a listener that can reach
what moves funds: a ledger passphrase, a sealed authority key, the verifier's key or socket (issue 17;
F1, I). With real accounts (root only): the coordinator's reaches none, the control worker's does."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.config import ControlPlaneConfig
from tests._accounts import require_other_accounts, run_as
from tests.infra.test_serve import _check, _env

CONTROL, COORDINATOR, VERIFIER = 65541, 65542, 65543
ESCROW, DATA = 65550, 65551


def _ledger_json(directory: Path, **extra: object) -> Path:
    path = directory / "ledger.json"
    path.write_text(json.dumps({
        "rpc_url": "http://127.0.0.1:9", "db_url": "postgresql+psycopg://escrow@127.0.0.1/escrow",
        "mint": "M", "decimals": 6, "multisig": "S", "minimum_payment": 1,
        "keys": {"coordinator": "keys/coordinator.key"}, **extra,
    }))  # fmt: skip
    path.chmod(0o644)
    (directory / "keys").mkdir(mode=0o750, exist_ok=True)
    key = directory / "keys" / "coordinator.key"
    key.write_text("{}")
    key.chmod(0o600)
    return path


def _with_ledger(settings: dict[str, str], ledger: Path, tmp_path: Path) -> dict[str, str]:
    config = ControlPlaneConfig.from_file(Path(settings["CYXWIZ_CONTROL_PLANE"]))
    moved = tmp_path / "control-plane.json"
    ControlPlaneConfig(**{**config.__dict__, "ledger_config": ledger}).to_file(moved)
    return {**settings, "CYXWIZ_CONTROL_PLANE": str(moved)}


@pytest.mark.parametrize(
    "service,secret",
    [
        ("coordinator", "CYXWIZ_LEDGER_PASSPHRASE"),
        ("coordinator", "CYXWIZ_LEDGER_PASSPHRASE_FILE"),
        ("gateway", "CYXWIZ_VERIFIER_PASSPHRASE_FILE"),
        ("gateway", "CYXWIZ_ARBITER_PASSPHRASE"),
    ],
)
def test_check_refuses_a_listener_given_a_ledger_passphrase(
    service: str,
    secret: str,
    control_plane: dict[str, str],
) -> None:
    proc = _check(service, _env(service, control_plane, **{secret: "/run/credentials/x"}))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert secret in lines[0] and "faces nodes and users" in lines[0] and "F1" in lines[0]
    assert "configuration ok" not in proc.stdout


def test_check_refuses_a_coordinator_that_can_read_an_escrow_key(
    control_plane: dict[str, str],
    tmp_path: Path,
) -> None:
    ledger = _ledger_json(tmp_path)
    settings = _with_ledger(control_plane, ledger, tmp_path)
    # This test runs as root, which can read every file: the key is within its reach.
    proc = _check("coordinator", _env("coordinator", settings))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "can read the ledger's sealed coordinator key" in proc.stderr and "keys.coordinator" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # Positive control: the same plane with the key kept elsewhere (not on this account's disk) starts.
    (tmp_path / "keys" / "coordinator.key").unlink()
    proc = _check("coordinator", _env("coordinator", settings))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "coordinator: configuration ok" in proc.stdout


REACH = """
import sys
from pathlib import Path
from infra.serve import money_within_reach
print(sorted(field for field, _, _ in money_within_reach(Path(sys.argv[1]))))
"""


@pytest.fixture
def installed_ledger() -> Iterator[Path]:
    """/etc/cyxwiz/ledger as the runbook installs it, and the verifier's socket in its runtime dir."""
    require_other_accounts(COORDINATOR)
    root = Path(tempfile.mkdtemp(prefix="cyxwiz-ledger-reach-"))
    root.chmod(0o711)
    sock = socket.socket(socket.AF_UNIX)
    try:
        run = root / "cyxwiz-verifier"
        run.mkdir(mode=0o750)
        os.chown(run, VERIFIER, ESCROW)
        sock.bind(str(run / "verifier.sock"))
        sock.listen(1)
        os.chown(run / "verifier.sock", VERIFIER, ESCROW)
        os.chmod(run / "verifier.sock", 0o660)
        state = root / "ledger-state"  # install -d -m 2770 -g cyxwiz-escrow (runbook)
        state.mkdir()
        os.chown(state, 0, ESCROW)
        state.chmod(0o2770)
        extra = {
            "verifier_socket": str(run / "verifier.sock"), "verifier_key": "keys/verifier-key.pem",
            "db_url": f"sqlite:///{state / 'escrow.db'}",
        }  # fmt: skip
        ledger = _ledger_json(root, **extra)
        os.chown(root / "keys", 0, ESCROW)
        os.chown(root / "keys" / "coordinator.key", CONTROL, CONTROL)
        (root / "keys" / "verifier-key.pem").write_text("x")
        (root / "keys" / "verifier-key.pem").chmod(0o600)
        os.chown(root / "keys" / "verifier-key.pem", VERIFIER, ESCROW)
        yield ledger
    finally:
        sock.close()
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        root.rmdir()


def test_only_the_control_workers_account_has_escrow_authority_within_reach(installed_ledger: Path) -> None:
    coordinator = run_as(COORDINATOR, [DATA], REACH, str(installed_ledger))
    assert coordinator.returncode == 0, coordinator.stderr[-2000:]
    assert coordinator.stdout.strip() == "[]", "the node-facing account reaches nothing that moves funds"
    control = run_as(CONTROL, [DATA, ESCROW], REACH, str(installed_ledger))
    assert control.returncode == 0, control.stderr[-2000:]
    assert control.stdout.strip() == "['db_url', 'keys.coordinator', 'verifier_socket']"
    verifier = run_as(VERIFIER, [], REACH, str(installed_ledger), gid=ESCROW)
    assert "verifier_key" in verifier.stdout and "keys.coordinator" not in verifier.stdout, verifier.stdout
