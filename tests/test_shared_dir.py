"""The audit log and the object store shared by two service accounts (issue 17; D2, H3, I).

Production runs the coordinator and the control worker as different Unix users, so that the coordinator,
which faces nodes and users, can never read the ledger's keys; both still write one audit log and one
object store, through a setgid directory of a group only they are in. These tests run the writers as
real, different uids (root only): the chain stays one chain, every file is the group's and nobody
else's, and an account outside the group reads nothing. Without the setgid bit, files stay 0600.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.audit import AuditLog, events
from cyxwiz.audit.records import parse_line
from cyxwiz.audit.verify import verify_log
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import LocalObjectStore
from tests._accounts import require_other_accounts, run_as

COORDINATOR, CONTROL, OUTSIDER = 65501, 65502, 65503  # three accounts
DATA_GROUP = 65510  # the group of the coordinator's and the control worker's accounts only
KEY = Ed25519PrivateKey.generate()
MASTER = os.urandom(32).hex()

WRITER = """
import os, sys
os.umask(0o007)  # the units' UMask for a service that writes a shared directory
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cyxwiz.audit import AuditLog, events
from cyxwiz.audit.records import parse_line
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import LocalObjectStore
root, who, master, pem = sys.argv[1], sys.argv[2], sys.argv[3], sys.stdin.buffer.read()
log = AuditLog.open(f"{root}/audit", signing_key=load_pem_private_key(pem, None), auto_maintain=False)
log.record(events.auth_attempt(actor_id=who, actor_type="user", success=True, method="mtls"))
log.close()
store = LocalObjectStore(root=f"{root}/store", master_key=MasterKey.from_text(master, field="m"))
for key in sys.argv[4:]:
    assert store.get_bytes(key) == key.encode(), key
store.put_bytes(f"jobs/{who}/out.bin", f"jobs/{who}/out.bin".encode(), encrypt=True)
"""


def _as(uid: int, groups: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    pem = KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return run_as(uid, groups, WRITER, *args, stdin=pem.decode())


@pytest.fixture
def shared_root() -> Iterator[Path]:
    require_other_accounts(OUTSIDER)
    root = Path(tempfile.mkdtemp(prefix="cyxwiz-shared-"))
    root.chmod(0o711)
    for name in ("audit", "store"):
        (root / name).mkdir()
        os.chown(root / name, 0, DATA_GROUP)
        (root / name).chmod(0o2770)  # install -d -m 2770 -g cyxwiz-data (runbook)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_two_accounts_share_one_audit_chain_and_one_store_and_no_one_else_reads_them(
    shared_root: Path,
) -> None:
    first = _as(COORDINATOR, [DATA_GROUP], str(shared_root), "coordinator", MASTER)
    assert first.returncode == 0, first.stderr[-2000:]
    second = _as(CONTROL, [DATA_GROUP], str(shared_root), "control", MASTER, "jobs/coordinator/out.bin")
    assert second.returncode == 0, second.stderr[-2000:]

    verdict = verify_log(shared_root / "audit", public_key=KEY.public_key())
    assert verdict.ok, verdict.first
    lines = [
        ln
        for p in sorted((shared_root / "audit").glob("audit-????-??-??.jsonl"))
        for ln in p.read_bytes().splitlines()
    ]
    actors = [parse_line(raw).event["actor_id"] for raw in lines]
    assert actors == ["coordinator", "control"], "one chain, both writers in it"
    store = LocalObjectStore(root=shared_root / "store", master_key=MasterKey.from_text(MASTER, field="m"))
    assert store.get_bytes("jobs/control/out.bin") == b"jobs/control/out.bin"

    made = [p for p in shared_root.rglob("*") if p.stat().st_uid in (COORDINATOR, CONTROL)]
    assert {p.stat().st_uid for p in made} == {COORDINATOR, CONTROL}, "each account wrote its own files"
    for path in made:
        mode = path.stat().st_mode
        assert path.stat().st_gid == DATA_GROUP, path
        assert stat.S_IMODE(mode) & 0o007 == 0, f"{path}: others may not touch it"
        if path.is_file():
            assert stat.S_IMODE(mode) & 0o060 == 0o060, f"{path}: the other account must read and write it"

    # An account outside the group (the verifier's, a node's) can neither append nor read.
    outsider = _as(OUTSIDER, [], str(shared_root), "outsider", MASTER, "jobs/coordinator/out.bin")
    assert outsider.returncode != 0
    assert "PermissionError" in outsider.stderr or "Permission denied" in outsider.stderr, outsider.stderr[
        -800:
    ]


def test_outside_a_setgid_directory_everything_stays_owner_only(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", signing_key=KEY, auto_maintain=False)
    log.record(events.auth_attempt(actor_id="a", actor_type="user", success=True, method="mtls"))
    log.close()
    store = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.from_text(MASTER, field="m"))
    store.put_bytes("jobs/j/out.bin", b"x", encrypt=True)
    made = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
    assert made
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for name in ("audit", "store", "store/objects", "store/meta"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700, name
