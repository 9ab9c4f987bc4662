"""Daily rotation with a controllable clock, gzip, signed digests, archive, retention (H3, H4)."""

from __future__ import annotations

import gzip
import json
from datetime import date, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.audit import AuditLog, LocalDirectoryArchive
from cyxwiz.audit.archive import archive_key
from cyxwiz.audit.digest import check_signature
from cyxwiz.audit.verify import verify_log
from tests.audit.conftest import TEST_KEY, ManualClock, sample_event

DAY1 = date(2026, 11, 20)


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith(".")}


def test_rotation_across_midnight_seals_and_gzips_the_closed_day(
    log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(log_dir, signing_key=signing_key, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
        clock.advance(minutes=59, seconds=59)  # 23:59:59 still day 1
        log.record(sample_event(2))
        clock.advance(seconds=2)  # 00:00:01 next day
        log.record(sample_event(3))
        report = log.maintain()
    assert report.sealed == [DAY1] and report.compressed == [DAY1]
    assert _names(log_dir) == {
        "audit-2026-11-20.jsonl.gz",
        "audit-2026-11-20.digest.json",
        "audit-2026-11-20.checkpoints.jsonl",
        "audit-2026-11-21.jsonl",
        "audit-2026-11-21.checkpoints.jsonl",
        "merkle.tree",
        "checkpoint",
    }
    day1 = gzip.decompress((log_dir / "audit-2026-11-20.jsonl.gz").read_bytes())
    assert len(day1.splitlines()) == 2
    digest = json.loads((log_dir / "audit-2026-11-20.digest.json").read_bytes())
    assert digest["records"] == 2 and digest["first_seq"] == 1 and digest["last_seq"] == 2
    assert digest["previous_day"] is None
    assert check_signature(digest, trusted=signing_key.public_key()) is None
    assert verify_log(log_dir, public_key=signing_key.public_key()).ok


def test_maintenance_with_no_new_events_still_closes_the_day(
    log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(log_dir, signing_key=signing_key, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
        clock.advance(days=3)
        assert log.maintain().sealed == [DAY1]
        log.record(sample_event(2))  # chains to the sealed, gzipped day
    report = verify_log(log_dir, public_key=signing_key.public_key())
    assert report.ok, report.problems


def test_maintenance_is_idempotent_and_gzip_is_deterministic(
    log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(log_dir, signing_key=signing_key, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
        clock.advance(days=1)
        log.maintain()
        first = (log_dir / "audit-2026-11-20.jsonl.gz").read_bytes()
        again = log.maintain()
    assert again.sealed == again.compressed == again.archived == again.pruned == []
    assert (log_dir / "audit-2026-11-20.jsonl.gz").read_bytes() == first
    raw = gzip.decompress(first)
    assert gzip.compress(raw, compresslevel=6, mtime=0) == first


def test_digests_chain_day_to_day(log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey) -> None:
    with AuditLog.open(log_dir, signing_key=signing_key, clock=clock, auto_maintain=False) as log:
        for _ in range(3):
            log.record(sample_event(1))
            clock.advance(days=1)
        log.maintain()
    d2 = json.loads((log_dir / "audit-2026-11-21.digest.json").read_bytes())
    assert d2["previous_day"] == "2026-11-20"
    import hashlib

    assert (
        d2["previous_digest_sha256"]
        == hashlib.sha256((log_dir / "audit-2026-11-20.digest.json").read_bytes()).hexdigest()
    )


def test_rollover_triggers_background_maintenance(
    log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(log_dir, signing_key=signing_key, clock=clock) as log:
        log.record(sample_event(1))
        clock.advance(days=1)
        log.record(sample_event(2))
        log.wait_for_maintenance(10)
    assert (log_dir / "audit-2026-11-20.digest.json").exists()


def test_closed_days_are_archived(log_dir: Path, clock: ManualClock, tmp_path: Path) -> None:
    archive = LocalDirectoryArchive(root=tmp_path / "archive")
    with AuditLog.open(
        log_dir, signing_key=TEST_KEY, clock=clock, archive=archive, auto_maintain=False
    ) as log:
        log.record(sample_event(1))
        clock.advance(days=1)
        assert log.maintain().archived == [DAY1]
    for name in ("audit-2026-11-20.jsonl.gz", "audit-2026-11-20.digest.json"):
        key = archive_key(DAY1, name)
        assert key == "audit/" + name.removeprefix("audit-")
        assert archive.get_path(key).read_bytes() == (log_dir / name).read_bytes()


def _days_of_logs(log: AuditLog, clock: ManualClock, days: int) -> None:
    for _ in range(days):
        log.record(sample_event(1))
        clock.advance(days=1)


def test_retention_deletes_only_archived_days_older_than_the_window(
    log_dir: Path, clock: ManualClock, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    archive = LocalDirectoryArchive(root=tmp_path / "archive")
    with AuditLog.open(
        log_dir, signing_key=signing_key, clock=clock, archive=archive, auto_maintain=False
    ) as log:
        _days_of_logs(log, clock, 10)  # days 20..29, clock now on day 30
        log.maintain()
    report_days = sorted(p.name for p in log_dir.glob("*.jsonl.gz"))
    # Window: 7 days before the head (30th) -> days before the 23rd may go, if archived.
    assert report_days[0] == "audit-2026-11-23.jsonl.gz"
    assert all((log_dir / f"audit-2026-11-{d}.digest.json").exists() for d in range(20, 30))
    assert verify_log(log_dir, public_key=signing_key.public_key()).ok


def test_retention_keeps_days_the_archive_does_not_hold(
    log_dir: Path, clock: ManualClock, tmp_path: Path
) -> None:
    class ForgetfulArchive(LocalDirectoryArchive):
        """Accepts uploads of day 21 but never has them (an archive that lost data)."""

        def exists(self, key: str) -> bool:
            return "2026-11-21" not in key and super().exists(key)

    with AuditLog.open(
        log_dir,
        signing_key=TEST_KEY,
        clock=clock,
        archive=ForgetfulArchive(root=tmp_path / "a"),
        auto_maintain=False,
    ) as log:
        _days_of_logs(log, clock, 10)
        report = log.maintain()
    assert date(2026, 11, 21) not in report.pruned
    assert (log_dir / "audit-2026-11-21.jsonl.gz").exists()
    assert not (log_dir / "audit-2026-11-20.jsonl.gz").exists()


def test_without_an_archive_nothing_is_ever_deleted(log_dir: Path, clock: ManualClock) -> None:
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        _days_of_logs(log, clock, 10)
        assert log.maintain().pruned == []
    assert len(list(log_dir.glob("*.jsonl.gz"))) == 10


def test_pruned_day_deleted_within_the_window_is_not_excused(
    log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(log_dir, signing_key=signing_key, clock=clock, auto_maintain=False) as log:
        _days_of_logs(log, clock, 3)
        log.maintain()
    (log_dir / "audit-2026-11-21.jsonl.gz").unlink()
    report = verify_log(log_dir, public_key=signing_key.public_key())
    assert report.first is not None and report.first.file == "audit-2026-11-21.jsonl.gz"


def test_signing_key_from_a_0600_file_and_refusal_of_a_readable_one(
    log_dir: Path, clock: ManualClock, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    import pytest
    from cryptography.hazmat.primitives import serialization

    from cyxwiz.errors import KeyPermissionError

    pem = signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "audit.key"
    path.write_bytes(pem)
    path.chmod(0o644)
    with pytest.raises(KeyPermissionError):
        AuditLog.open(log_dir, signing_key=path, clock=clock)
    path.chmod(0o600)
    with AuditLog.open(log_dir, signing_key=path, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
        clock.advance(days=1)
        log.maintain()
    assert verify_log(log_dir, public_key=signing_key.public_key()).ok
    assert clock.now.date() - timedelta(days=1) == DAY1
