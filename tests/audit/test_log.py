"""The writer: hash chain, sequence numbers, threads, rotation by clock, torn tails (H3, H4)."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

from cyxwiz.audit import AuditLog, AuditSink, MemorySink, events
from cyxwiz.audit.records import GENESIS, parse_line
from cyxwiz.errors import AuditError, ConfigError
from tests.audit.conftest import TEST_KEY, ManualClock, sample_event


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_chained_and_numbered(audit_log: AuditLog, log_dir: Path) -> None:
    for i in range(5):
        audit_log.record(sample_event(i))
    path = log_dir / "audit-2026-11-20.jsonl"
    lines = path.read_bytes().splitlines()
    parsed = [parse_line(raw) for raw in lines]
    assert [r.seq for r in parsed] == [1, 2, 3, 4, 5]
    assert parsed[0].prev == GENESIS
    assert all(r.hash_ok for r in parsed)
    assert all(b.prev == a.hash for a, b in itertools.pairwise(parsed))
    assert parsed[2].event["actor_id"] == "user-2"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(log_dir.stat().st_mode & 0o777) == "0o700"


def test_audit_log_and_memory_sink_satisfy_the_sink_protocol(audit_log: AuditLog) -> None:
    assert isinstance(audit_log, AuditSink)
    sink = MemorySink()
    assert isinstance(sink, AuditSink)
    sink.record(sample_event())
    assert sink.of_action("authenticate")


def test_reopen_continues_the_chain(log_dir: Path, clock: ManualClock) -> None:
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(2))
    recs = [parse_line(r) for r in (log_dir / "audit-2026-11-20.jsonl").read_bytes().splitlines()]
    assert [r.seq for r in recs] == [1, 2] and recs[1].prev == recs[0].hash


def test_two_handles_in_one_process_interleave_without_forking_the_chain(
    log_dir: Path, clock: ManualClock
) -> None:
    a = AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False)
    b = AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False)
    for i in range(10):
        (a if i % 2 else b).record(sample_event(i))
    a.close()
    b.close()
    recs = [parse_line(r) for r in (log_dir / "audit-2026-11-20.jsonl").read_bytes().splitlines()]
    assert [r.seq for r in recs] == list(range(1, 11))
    assert all(y.prev == x.hash for x, y in itertools.pairwise(recs))


def test_threads_write_whole_lines_in_one_chain(audit_log: AuditLog, log_dir: Path) -> None:
    def work(n: int) -> None:
        for i in range(200):
            audit_log.record(sample_event(n * 1000 + i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = [parse_line(r) for r in (log_dir / "audit-2026-11-20.jsonl").read_bytes().splitlines()]
    assert [r.seq for r in recs] == list(range(1, 1601))
    assert all(r.hash_ok for r in recs)
    assert all(y.prev == x.hash for x, y in itertools.pairwise(recs))


def test_day_rollover_by_clock_starts_a_new_file_and_keeps_the_chain(
    audit_log: AuditLog, log_dir: Path, clock: ManualClock
) -> None:
    audit_log.record(sample_event(1))
    clock.advance(hours=2)  # 2026-11-21 01:00
    audit_log.record(sample_event(2))
    first = parse_line((log_dir / "audit-2026-11-20.jsonl").read_bytes().rstrip(b"\n"))
    second = parse_line((log_dir / "audit-2026-11-21.jsonl").read_bytes().rstrip(b"\n"))
    assert second.seq == 2 and second.prev == first.hash


def test_a_writer_with_a_slow_clock_never_forks_the_chain_into_an_old_day(log_dir: Path) -> None:
    from datetime import UTC, datetime

    fast = ManualClock(datetime(2026, 11, 21, 0, 0, 1, tzinfo=UTC))
    slow = ManualClock(datetime(2026, 11, 20, 23, 59, 59, tzinfo=UTC))
    with (
        AuditLog.open(log_dir, signing_key=TEST_KEY, clock=fast, auto_maintain=False) as a,
        AuditLog.open(log_dir, signing_key=TEST_KEY, clock=slow, auto_maintain=False) as b,
    ):
        a.record(sample_event(1))
        b.record(sample_event(2))
    assert not (log_dir / "audit-2026-11-20.jsonl").exists()
    recs = [parse_line(r) for r in (log_dir / "audit-2026-11-21.jsonl").read_bytes().splitlines()]
    assert [r.seq for r in recs] == [1, 2]


@pytest.mark.parametrize(
    "torn",
    [
        b'{"hash":"abc',  # a writer process crashed mid-write
        # The head is looked for in growing reads from the end (4 KiB first): a torn line of 40 KB takes two.
        b'{"hash":"' + b"a" * 40_000,
    ],
    ids=["short", "longer-than-the-first-read"],
)
def test_torn_tail_is_terminated_and_chain_continues_from_last_intact_record(
    audit_log: AuditLog, log_dir: Path, clock: ManualClock, torn: bytes
) -> None:
    audit_log.record(sample_event(1))
    path = log_dir / "audit-2026-11-20.jsonl"
    with path.open("ab") as fh:
        fh.write(torn)
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as restarted:
        restarted.record(sample_event(2))
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and lines[1] == torn
    assert parse_line(lines[2]).prev == parse_line(lines[0]).hash
    assert parse_line(lines[2]).seq == 2


def test_failed_write_makes_every_writer_reread_the_tail(
    audit_log: AuditLog, log_dir: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os as _os

    other = AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False)
    other.record(sample_event(1))
    audit_log.record(sample_event(2))
    path = log_dir / "audit-2026-11-20.jsonl"
    real_write = _os.write

    def disk_full(fd: int, data: bytes) -> int:
        if bytes(data[:2]) != b'{"':
            return real_write(fd, data)  # the Merkle nodes go through; the record line does not
        real_write(fd, bytes(data)[:7])  # a partial line, then ENOSPC
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cyxwiz.audit.log.os.write", disk_full)
    with pytest.raises(AuditError, match="No space left"):
        audit_log.record(sample_event(3))
    monkeypatch.setattr("cyxwiz.audit.log.os.write", real_write)
    other.record(sample_event(4))  # the *other* handle must notice and terminate the partial line
    other.close()
    lines = path.read_bytes().splitlines()
    assert len(lines[2]) == 7
    assert parse_line(lines[3]).seq == 3 and parse_line(lines[3]).prev == parse_line(lines[1]).hash
    # The tree got the failed record's leaf before the line failed: the next writer cut it back.
    from cyxwiz.audit.verify import Kind, verify_log

    report = verify_log(log_dir, public_key=TEST_KEY.public_key())
    assert [p.kind for p in report.problems] == [Kind.MALFORMED]


def test_oversized_details_are_replaced_by_a_size_note(audit_log: AuditLog, log_dir: Path) -> None:
    big = events.data_access(
        actor_id="u", actor_type="user", resource="r", action="a", details={"x": "y" * 100_000}
    )
    audit_log.record(big)
    rec = parse_line((log_dir / "audit-2026-11-20.jsonl").read_bytes().rstrip(b"\n"))
    assert rec.event["details"]["truncated_bytes"] > 100_000
    assert rec.event["actor_id"] == "u"


def test_closed_log_refuses_and_bad_config_is_typed(audit_log: AuditLog, log_dir: Path) -> None:
    audit_log.close()
    with pytest.raises(AuditError):
        audit_log.record(sample_event())
    with pytest.raises(ConfigError) as err:
        AuditLog(directory=log_dir, signing_key=TEST_KEY, retention_days=0)
    assert err.value.field == "retention_days"
    file_in_the_way = log_dir.parent / "plainfile"
    file_in_the_way.write_text("x")
    with pytest.raises(AuditError):
        AuditLog.open(file_in_the_way, signing_key=TEST_KEY)


def test_from_env(tmp_path: Path, signing_key: object) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    assert isinstance(signing_key, Ed25519PrivateKey)
    key_path = tmp_path / "k.pem"
    key_path.write_bytes(
        signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    env = {
        "CYXWIZ_AUDIT_DIR": str(tmp_path / "a"),
        "CYXWIZ_AUDIT_SIGNING_KEY": str(key_path),
        "CYXWIZ_AUDIT_RETENTION_DAYS": "30",
        "CYXWIZ_AUDIT_FSYNC": "always",
    }
    with AuditLog.from_env(env) as log:
        assert log.retention_days == 30 and log.fsync == "always" and log.signing_key is not None
    with pytest.raises(ConfigError) as err:
        AuditLog.from_env({})
    assert err.value.field == "CYXWIZ_AUDIT_DIR"
    with pytest.raises(ConfigError) as err:
        AuditLog.from_env({**env, "CYXWIZ_AUDIT_FSYNC": "sometimes"})
    assert err.value.field == "CYXWIZ_AUDIT_FSYNC"


def test_checkpoints_cover_every_record_soon_after_it_is_written(log_dir: Path, clock: ManualClock) -> None:
    """H4 / issue 19: signed at the first record, by the timer once appends pause, at rotation, at close."""
    import time as _time

    from cyxwiz.audit.checkpoint import verify_checkpoint
    from cyxwiz.audit.records import CHECKPOINT_FILE

    def signed_size() -> int:
        return verify_checkpoint(
            (log_dir / CHECKPOINT_FILE).read_bytes(), public_key=TEST_KEY.public_key()
        ).size

    log = AuditLog.open(
        log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False, checkpoint_interval=0.05
    )
    log.record(sample_event(1))
    assert signed_size() == 1  # the first record is signed at once
    log.record(sample_event(2))
    log.record(sample_event(3))
    deadline = _time.monotonic() + 10
    while signed_size() < 3 and _time.monotonic() < deadline:
        _time.sleep(0.02)
    assert signed_size() == 3  # the timer covered the pause
    clock.advance(hours=2)  # past midnight: the old day's last checkpoint goes to its history
    log.record(sample_event(4))
    history = (log_dir / "audit-2026-11-20.checkpoints.jsonl").read_text().splitlines()
    assert any(
        verify_checkpoint(json.loads(h)["note"].encode(), public_key=TEST_KEY.public_key()).size == 3
        for h in history
    )
    log.close()
    assert signed_size() == 4
