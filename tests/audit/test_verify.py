"""`verify` names the exact place of every kind of tampering (H4). Each test attacks the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.audit.digest import build_digest
from cyxwiz.audit.reader import read_file_bytes
from cyxwiz.audit.records import build_line, parse_line
from cyxwiz.audit.verify import Kind, VerifyReport, verify_log
from tests.audit.conftest import TEST_KEY, ManualClock, build_log
from tests.audit.tamper import edit_lines, rehash


@pytest.fixture
def files(log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey) -> list[Path]:
    return build_log(log_dir, clock, signing_key)


#: What the whole-log checks add after the record-level finding (the same incident, seen by the tree).
WHOLE_LOG = {Kind.CHECKPOINT_MISMATCH, Kind.TRUNCATED}


def _verify(log_dir: Path, key: Ed25519PrivateKey) -> VerifyReport:
    return verify_log(log_dir, public_key=key.public_key())


def _first(report: VerifyReport) -> tuple[Kind, str, int | None]:
    assert not report.ok, "tampering went unnoticed"
    first = report.first
    assert first is not None
    return first.kind, first.file, first.line


def test_untouched_log_verifies(files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    report = _verify(log_dir, signing_key)
    assert report.ok, report.problems
    assert report.records == 20 and report.files == 4 and len(report.days) == 4


@pytest.mark.parametrize("day", [1, 3])  # a sealed, gzipped day and the open day
def test_edited_field_is_named_by_file_and_line(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey, day: int
) -> None:
    edit_lines(files[day], lambda ls: [*ls[:2], ls[2].replace(b'"user-', b'"root-'), *ls[3:]])
    assert _first(_verify(log_dir, signing_key)) == (Kind.EDITED, files[day].name, 3)


def test_edited_closed_day_also_fails_its_signed_digest(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    edit_lines(files[1], lambda ls: [*ls[:2], ls[2].replace(b"user-", b"usex-"), *ls[3:]])
    kinds = [p.kind for p in _verify(log_dir, signing_key).problems]
    assert kinds == [Kind.EDITED, Kind.DAY_ALTERED, Kind.CHECKPOINT_MISMATCH]


@pytest.mark.parametrize("day", [1, 3])
def test_rewritten_record_with_recomputed_hash_is_named(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey, day: int
) -> None:
    edit_lines(files[day], lambda ls: [*ls[:2], rehash(ls[2], actor_id="someone-else"), *ls[3:]])
    assert _first(_verify(log_dir, signing_key)) == (Kind.REWRITTEN, files[day].name, 3)


@pytest.mark.parametrize("day", [1, 3])
def test_deleted_line_is_named(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey, day: int
) -> None:
    edit_lines(files[day], lambda ls: [*ls[:2], *ls[3:]])
    kind, name, line = _first(_verify(log_dir, signing_key))
    assert (kind, name, line) == (Kind.DELETED, files[day].name, 3)


def test_deleted_last_line_of_a_closed_day_is_caught_by_its_digest(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    edit_lines(files[1], lambda ls: ls[:-1])
    report = _verify(log_dir, signing_key)
    assert _first(report) == (Kind.TRUNCATED, files[1].name, 5)
    assert not any(p.file == files[2].name for p in report.problems)  # the next day is not blamed for it


def test_records_cut_off_the_end_of_the_open_day_are_caught_by_the_checkpoint(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    edit_lines(files[3], lambda ls: ls[:-2])
    report = _verify(log_dir, signing_key)
    assert _first(report) == (Kind.TRUNCATED, files[3].name, 4)
    assert "seq 18" in report.problems[0].message and "seq 20" in report.problems[0].message


def test_writer_logs_an_alert_when_records_vanished_since_its_last_write(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey, clock: ManualClock
) -> None:
    from cyxwiz.audit import AuditLog
    from tests.audit.conftest import sample_event

    edit_lines(files[3], lambda ls: ls[:-2])
    with AuditLog.open(log_dir, signing_key=signing_key, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
    recs = [parse_line(raw) for raw in files[3].read_bytes().splitlines()]
    alert = recs[-2].event
    assert alert["action"] == "audit.tamper_detected" and alert["outcome"] == "failure"
    assert "seq 18" in alert["details"]["reason"]
    assert recs[-1].event["actor_id"] == "user-1"


@pytest.mark.parametrize("day", [1, 3])
def test_reordered_lines_are_named(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey, day: int
) -> None:
    edit_lines(files[day], lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])
    assert _first(_verify(log_dir, signing_key)) == (Kind.REORDERED, files[day].name, 2)


def test_replayed_copy_of_a_line_is_named(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    edit_lines(files[3], lambda ls: [*ls[:3], ls[0], *ls[3:]])
    report = _verify(log_dir, signing_key)
    assert _first(report) == (Kind.INSERTED, files[3].name, 4)
    assert {p.kind for p in report.problems[1:]} <= WHOLE_LOG


@pytest.mark.parametrize("after", [False, True])
def test_forged_well_formed_record_is_named(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey, after: bool
) -> None:
    """The attacker writes a record with the right seq, prev and hash next to the genuine one."""

    def forge(ls: list[bytes]) -> list[bytes]:
        genuine = parse_line(ls[2].rstrip(b"\n"))
        event = dict(genuine.event, actor_id="mallory")
        fake, _ = build_line(genuine.seq, genuine.prev, json.dumps(event).encode())
        return [*ls[:3], fake, *ls[3:]] if after else [*ls[:2], fake, *ls[2:]]

    edit_lines(files[3], forge)
    assert _first(_verify(log_dir, signing_key)) == (Kind.INSERTED, files[3].name, 4 if after else 3)


def test_garbage_and_torn_lines_are_named(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    edit_lines(files[3], lambda ls: [*ls[:1], b"hello\n", *ls[1:], b'{"hash":"12'])
    report = _verify(log_dir, signing_key)
    assert [(p.kind, p.line) for p in report.problems] == [(Kind.MALFORMED, 2), (Kind.TORN, 7)]


def test_whole_day_deleted_is_named_by_the_next_digest(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    files[1].unlink()
    (log_dir / files[1].name.replace(".jsonl.gz", ".digest.json")).unlink()
    report = _verify(log_dir, signing_key)
    assert _first(report) == (Kind.DAY_MISSING, files[1].name, None)
    assert "2026-11-21" in str(report.first)


def test_newest_closed_day_deleted_shows_as_a_gap_in_the_open_day(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    files[2].unlink()
    (log_dir / files[2].name.replace(".jsonl.gz", ".digest.json")).unlink()
    kind, name, line = _first(_verify(log_dir, signing_key))
    assert (kind, name, line) == (Kind.DELETED, files[3].name, 1)


def test_day_file_deleted_but_digest_left(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    files[1].unlink()
    assert _first(_verify(log_dir, signing_key)) == (Kind.DAY_MISSING, files[1].name, None)


def test_digest_edited_fails_its_signature(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = log_dir / "audit-2026-11-21.digest.json"
    digest = json.loads(path.read_bytes())
    digest["records"] = 4
    path.write_text(json.dumps(digest))
    report = _verify(log_dir, signing_key)
    assert _first(report)[:2] == (Kind.DIGEST_INVALID, path.name)
    assert "does not verify" in str(report.first)


def test_day_rewritten_and_resigned_by_another_key_is_refused_with_pinned_key(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    """The attacker rewrites a whole day consistently and re-signs its digest with their own key."""
    from datetime import UTC, datetime, timedelta

    edit_lines(files[1], lambda ls: [ls[0], *ls[2:]])  # drop a record...
    day = datetime(2026, 11, 21, tzinfo=UTC).date()
    prev = (day - timedelta(days=1), (log_dir / "audit-2026-11-20.digest.json").read_bytes())
    mallory = Ed25519PrivateKey.generate()
    forged = build_digest(
        day=day,
        file_name="audit-2026-11-21.jsonl",
        data=read_file_bytes(files[1]),
        previous=prev,
        signing_key=mallory,
        created_at=datetime.now(UTC),
    )
    (log_dir / "audit-2026-11-21.digest.json").write_bytes(forged)
    report = _verify(log_dir, signing_key)
    assert any(p.kind is Kind.DIGEST_INVALID and "another key" in p.message for p in report.problems)
    assert _first(report) == (Kind.DIGEST_INVALID, "audit-2026-11-21.digest.json", None)


def test_digest_of_an_earlier_day_replaced_breaks_the_digest_chain(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = log_dir / "audit-2026-11-20.digest.json"
    path.write_bytes(path.read_bytes().replace(b'"created_at"', b'"created_at" '))
    kinds = {(p.kind, p.file) for p in _verify(log_dir, signing_key).problems}
    assert (Kind.DIGEST_CHAIN, path.name) in kinds


def test_log_and_verify_refuse_to_work_without_a_key(log_dir: Path) -> None:
    """H4: no unsigned digests or checkpoints exist, and verify trusts only a pinned key."""
    from cyxwiz.audit import AuditLog
    from cyxwiz.errors import AuditError, ConfigError

    with pytest.raises(ConfigError) as err:
        AuditLog.open(log_dir)
    assert err.value.field == "signing_key" and err.value.rule == "H4"
    with pytest.raises(AuditError):
        verify_log(log_dir, public_key=None)  # type: ignore[arg-type]


def test_single_file_checks_its_own_chain(files: list[Path], signing_key: Ed25519PrivateKey) -> None:
    assert verify_log(files[1], public_key=TEST_KEY.public_key()).ok
    edit_lines(files[1], lambda ls: [ls[0], ls[1], ls[3], ls[2], ls[4]])
    assert _first(verify_log(files[1], public_key=TEST_KEY.public_key())) == (
        Kind.REORDERED,
        files[1].name,
        3,
    )


def test_corrupt_gzip_is_reported_not_raised(
    files: list[Path], log_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    data = bytearray(files[1].read_bytes())
    data[20:30] = b"\x00" * 10
    files[1].write_bytes(bytes(data))
    kind, name, _ = _first(_verify(log_dir, signing_key))
    assert (kind, name) == (Kind.UNREADABLE, files[1].name)
