"""The holes of issue 19, attacked (H4, I "tampering"): every way to hide records is detected, and only
the pinned key is trusted. Each attack sits beside an honest control that verifies."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.audit import AuditLog, LocalDirectoryArchive
from cyxwiz.audit.checkpoint import sign_checkpoint, verify_checkpoint
from cyxwiz.audit.merkle import Frontier
from cyxwiz.audit.records import CHECKPOINT_FILE, HEAD_FILE, build_line, leaf_of, parse_line
from cyxwiz.audit.verify import Kind, VerifyReport, verify_log
from cyxwiz.errors import AuditIntegrityError
from tests.audit.conftest import TEST_KEY, ManualClock, build_log, sample_event
from tests.audit.tamper import edit_lines

PUB = TEST_KEY.public_key()


@pytest.fixture
def files(log_dir: Path, clock: ManualClock) -> list[Path]:
    return build_log(log_dir, clock, TEST_KEY)


def _kinds(report: VerifyReport) -> set[Kind]:
    assert not report.ok, "tampering went unnoticed"
    return {p.kind for p in report.problems}


def _rechain(lines: list[bytes], start: int, change: dict[str, object]) -> list[bytes]:
    """Rewrite records from ``start`` on consistently: edited event, every hash and link recomputed."""
    out = list(lines[:start])
    prev = parse_line(lines[start - 1].rstrip(b"\n")).hash if start else parse_line(lines[0]).prev
    for i, line in enumerate(lines[start:]):
        rec = parse_line(line.rstrip(b"\n"))
        event = dict(rec.event, **change) if i == 0 else rec.event
        new, prev = build_line(rec.seq, prev, json.dumps(event, separators=(",", ":")).encode())
        out.append(new)
    return out


def test_control_honest_log_verifies_with_the_pinned_key(files: list[Path], log_dir: Path) -> None:
    report = verify_log(log_dir, public_key=PUB)
    assert report.ok, report.problems
    assert report.checkpoint is not None and report.checkpoint["size"] == 20
    assert report.checkpoints_checked >= 4


@pytest.mark.parametrize("head", ["kept", "deleted", "forged"])
@pytest.mark.parametrize("cut", [1, 3])
def test_open_day_truncation_is_detected_with_or_without_the_head_file(
    files: list[Path], log_dir: Path, head: str, cut: int
) -> None:
    edit_lines(files[3], lambda ls: ls[:-cut])
    if head == "deleted":
        (log_dir / HEAD_FILE).unlink()
    elif head == "forged":  # the head rewritten to agree with the cut log
        last = parse_line(files[3].read_bytes().splitlines()[-1])
        (log_dir / HEAD_FILE).write_bytes(b"2026-11-23 %d %s\n" % (last.seq, last.hash.encode()))
    assert Kind.TRUNCATED in _kinds(verify_log(log_dir, public_key=PUB))


def test_truncation_with_the_latest_checkpoint_also_removed_is_detected(
    files: list[Path], log_dir: Path
) -> None:
    edit_lines(files[3], lambda ls: ls[:-2])
    (log_dir / HEAD_FILE).unlink()
    (log_dir / CHECKPOINT_FILE).unlink()
    assert Kind.CHECKPOINT_MISSING in _kinds(verify_log(log_dir, public_key=PUB))


def test_rollback_to_an_older_checkpoint_is_caught_by_one_a_party_kept(
    files: list[Path], log_dir: Path
) -> None:
    kept = (log_dir / CHECKPOINT_FILE).read_bytes()  # a party (or the chain) holds the size-20 checkpoint
    lines = files[3].read_bytes().splitlines(keepends=True)
    edit_lines(files[3], lambda ls: ls[:-2])
    frontier = Frontier()
    for path in files[:3]:
        import gzip

        for raw in gzip.decompress(path.read_bytes()).splitlines():
            frontier.append(leaf_of(raw))
    for raw in lines[:-2]:
        frontier.append(leaf_of(raw.rstrip(b"\n")))
    # The attacker has an honest older checkpoint (size 18) from the history and puts it back.
    older = sign_checkpoint(origin="cyxwiz.local/audit", size=18, root=frontier.root(), key=TEST_KEY)
    (log_dir / CHECKPOINT_FILE).write_bytes(older)
    for history in log_dir.glob("*.checkpoints.jsonl"):
        history.unlink()
    (log_dir / HEAD_FILE).unlink()
    from cyxwiz.audit.merkle import nodes_for

    os.truncate(log_dir / "merkle.tree", nodes_for(18) * 32)  # and the tree cut back to match
    assert verify_log(log_dir, public_key=PUB).ok  # nothing local is left to tell...
    report = verify_log(log_dir, public_key=PUB, checkpoints=[kept])
    assert Kind.TRUNCATED in _kinds(report)  # ...but the kept checkpoint is


@pytest.mark.parametrize("day", [1, 3])
def test_a_consistently_rechained_day_is_caught_by_the_signed_checkpoints(
    files: list[Path], log_dir: Path, day: int
) -> None:
    """Edit a record and recompute every hash and link after it: the chain holds, the tree does not."""
    edit_lines(files[day], lambda ls: _rechain(ls, 1, {"actor_id": "mallory"}))
    kinds = _kinds(verify_log(log_dir, public_key=PUB))
    assert Kind.CHECKPOINT_MISMATCH in kinds or Kind.DAY_ALTERED in kinds


def test_reordered_and_edited_records_fail_the_checkpoint_too(files: list[Path], log_dir: Path) -> None:
    edit_lines(files[3], lambda ls: [ls[1], ls[0], *ls[2:]])
    assert {Kind.REORDERED, Kind.CHECKPOINT_MISMATCH} <= _kinds(verify_log(log_dir, public_key=PUB))


@pytest.mark.parametrize("age", [2, 30])
def test_a_deleted_day_of_any_age_is_detected_never_excused_as_pruned(
    log_dir: Path, clock: ManualClock, age: int
) -> None:
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        for _ in range(3):
            log.record(sample_event(1, at=clock.now))
            clock.advance(days=1)
        clock.advance(days=age)
        log.record(sample_event(2, at=clock.now))
        log.maintain()
    victim = log_dir / "audit-2026-11-21.jsonl.gz"
    victim.unlink()
    # The head moved far ahead (as if retention had long passed): no excuse without a signed marker.
    (log_dir / HEAD_FILE).write_bytes(b"2027-06-01 99 " + b"0" * 64 + b"\n")
    report = verify_log(log_dir, public_key=PUB)
    assert Kind.DAY_MISSING in _kinds(report)


def test_pruned_day_with_its_signed_marker_verifies_and_a_foreign_marker_does_not(
    log_dir: Path, clock: ManualClock, tmp_path: Path
) -> None:
    archive = LocalDirectoryArchive(root=tmp_path / "archive")
    with AuditLog.open(
        log_dir, signing_key=TEST_KEY, clock=clock, archive=archive, auto_maintain=False
    ) as log:
        for _ in range(10):
            log.record(sample_event(1, at=clock.now))
            clock.advance(days=1)
        log.record(sample_event(2, at=clock.now))
        report = log.maintain()
    assert date(2026, 11, 20) in report.pruned
    assert verify_log(log_dir, public_key=PUB).ok
    marker = log_dir / "audit-2026-11-20.pruned.json"
    mallory = Ed25519PrivateKey.generate()
    from cyxwiz.audit.prune import write_prune_marker

    write_prune_marker(
        log_dir,
        day=date(2026, 11, 26),
        gz=log_dir / "audit-2026-11-26.jsonl.gz",
        digest=(log_dir / "audit-2026-11-26.digest.json").read_bytes(),
        archive_keys=[],
        key=mallory,
        at=clock.now,
    )
    (log_dir / "audit-2026-11-26.jsonl.gz").unlink()
    report2 = verify_log(log_dir, public_key=PUB)
    assert Kind.DAY_MISSING in _kinds(report2)
    assert "another key" in str(report2.first)
    assert marker.exists()


def test_checkpoint_signed_by_another_key_is_refused(files: list[Path], log_dir: Path) -> None:
    mallory = Ed25519PrivateKey.generate()
    note = (log_dir / CHECKPOINT_FILE).read_bytes()
    cp = verify_checkpoint(note, public_key=PUB)
    forged = sign_checkpoint(origin=cp.origin, size=cp.size + 5, root=cp.root, key=mallory)
    (log_dir / CHECKPOINT_FILE).write_bytes(forged)
    report = verify_log(log_dir, public_key=PUB)
    assert Kind.CHECKPOINT_INVALID in _kinds(report)
    assert any("another key" in p.message for p in report.problems)


def test_checkpoint_edited_after_signing_is_refused(files: list[Path], log_dir: Path) -> None:
    path = log_dir / CHECKPOINT_FILE
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"21"
    path.write_bytes(b"\n".join(lines))
    assert Kind.CHECKPOINT_INVALID in _kinds(verify_log(log_dir, public_key=PUB))


def test_only_the_pinned_key_is_trusted(files: list[Path], log_dir: Path) -> None:
    """The honest log does not verify under another key: verify never uses a key the files carry."""
    other = Ed25519PrivateKey.generate().public_key()
    kinds = _kinds(verify_log(log_dir, public_key=other))
    assert Kind.CHECKPOINT_INVALID in kinds and Kind.DIGEST_INVALID in kinds
    digest = json.loads((log_dir / "audit-2026-11-20.digest.json").read_bytes())
    assert "public_key" not in digest  # nothing to be tempted by


def test_the_writer_alerts_and_keeps_the_evidence_when_records_vanish(
    files: list[Path], log_dir: Path, clock: ManualClock
) -> None:
    edit_lines(files[3], lambda ls: ls[:-2])
    (log_dir / HEAD_FILE).unlink()
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(7))
    kinds = _kinds(verify_log(log_dir, public_key=PUB))
    assert Kind.TAMPER_ALERT in kinds and Kind.CHECKPOINT_MISMATCH in kinds


def test_production_refuses_without_a_key_and_dev_signs_with_a_throwaway_one(
    log_dir: Path, clock: ManualClock, capsys: pytest.CaptureFixture[str]
) -> None:
    from cyxwiz.audit.digest import load_public_key
    from cyxwiz.errors import ConfigError

    with pytest.raises(ConfigError):
        AuditLog.open(log_dir, clock=clock)
    with pytest.raises(ConfigError):
        AuditLog.from_env({"CYXWIZ_AUDIT_DIR": str(log_dir)})
    with AuditLog.open(log_dir, dev=True, clock=clock, auto_maintain=False) as log:
        log.record(sample_event(1))
    assert "DEVELOPMENT MODE" in capsys.readouterr().err
    dev_key = log_dir / ".dev-audit-key.pem"
    assert oct(dev_key.stat().st_mode & 0o777) == "0o600"
    assert verify_log(log_dir, public_key=load_public_key(dev_key)).ok
    assert not verify_log(log_dir, public_key=PUB).ok


def test_everything_deleted_but_the_tree_is_still_detected(files: list[Path], log_dir: Path) -> None:
    for path in log_dir.iterdir():
        if path.name != "merkle.tree":
            path.unlink()
    report = verify_log(log_dir, public_key=PUB)
    assert Kind.TRUNCATED in _kinds(report) and "records deleted" in str(report.first)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\x0b", "\r", "\x1f"])
def test_checkpoint_with_a_control_character_is_refused(files: list[Path], log_dir: Path, char: str) -> None:
    note = (log_dir / CHECKPOINT_FILE).read_bytes()
    assert verify_checkpoint(note, public_key=PUB).size == 20  # positive control: only newlines in it
    origin, rest = note.split(b"\n", 1)
    with pytest.raises(AuditIntegrityError, match="control characters"):
        verify_checkpoint(origin + char.encode() + b"\n" + rest, public_key=PUB)
