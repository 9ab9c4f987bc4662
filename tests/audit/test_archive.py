"""Archive to the real object store (cyxwiz.storage, client-side encrypted) and the local directory (H3)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from cyxwiz.audit import AuditArchive, AuditLog, LocalDirectoryArchive, ObjectStoreArchive
from cyxwiz.audit.verify import verify_log
from cyxwiz.errors import AuditError
from cyxwiz.storage import LocalObjectStore, MasterKey, layout
from tests.audit.conftest import TEST_KEY, ManualClock, sample_event

DAY1 = date(2026, 11, 20)


def test_object_store_archive_uses_the_storage_layout_and_encrypts(
    log_dir: Path, clock: ManualClock, tmp_path: Path
) -> None:
    store = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.generate())
    archive = ObjectStoreArchive(store=store)
    assert isinstance(archive, AuditArchive)
    with AuditLog.open(
        log_dir, signing_key=TEST_KEY, clock=clock, archive=archive, auto_maintain=False
    ) as log:
        for _ in range(10):
            log.record(sample_event(1))
            clock.advance(days=1)
        report = log.maintain()
    assert DAY1 in report.archived and DAY1 in report.pruned
    assert (
        store.get_bytes(layout.audit_digest(DAY1)) == (log_dir / "audit-2026-11-20.digest.json").read_bytes()
    )
    gz = store.get_bytes(layout.audit_day(DAY1))
    assert gz.startswith(b"\x1f\x8b")
    # Client-side encryption: the plaintext gzip never sits in the store's files.
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert gz not in stored
    assert verify_log(log_dir, public_key=TEST_KEY.public_key()).ok


def test_local_archive_refuses_keys_that_climb(tmp_path: Path) -> None:
    archive = LocalDirectoryArchive(root=tmp_path / "a")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for key in ("../escape", "/abs/key", "a/../../b", ""):
        with pytest.raises(AuditError):
            archive.put_file(key, src)
    assert not (tmp_path / "escape").exists()
