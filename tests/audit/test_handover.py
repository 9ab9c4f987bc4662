"""Two writers taking turns on one log, as a lifecycle process and the verifier service do at every escrow
move: each hand-over finds the chain head where the other writer left it (its token in ``.head``, checked
against the day file's last line) and the Merkle tree whole (a writer taking turns flushes its nodes with
each record), reading only what the other writer appended, however long the day's file already is; and
one checkpoint every interval serves them all (H3, H4; issue 17's speed)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.audit import AuditLog, tree_writer, writer
from cyxwiz.audit.proofs import prove_inclusion
from cyxwiz.audit.verify import verify_log
from tests.audit.conftest import TEST_KEY, sample_event

EARLIER = 400
TURNS = 20


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    parsed: Counter[str] = Counter()
    for module in (tree_writer, writer):
        real = module.parse_line

        def counting(raw: bytes, real: Any = real, name: str = module.__name__) -> Any:
            parsed[name] += 1
            return real(raw)

        monkeypatch.setattr(module, "parse_line", counting)
    return parsed


def test_writers_taking_turns_read_only_what_the_other_appended(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False)
    second = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False)
    for i in range(EARLIER):  # a day file with a long tail before the turns begin
        first.record(sample_event(i))
    parsed = _count_parses(monkeypatch)
    receipts = [(first if turn % 2 else second).record(sample_event(10_000 + turn)) for turn in range(TURNS)]
    # The second writer's first turn reads the tail (its first look at the day) and the leaves the tree
    # lacks (the first writer's batch not yet flushed); from then on every hand-over takes the head from
    # the token and the tree from its file: no record is parsed, where a catch-up that parsed the whole
    # tail read hundreds of records per turn.
    assert 0 < sum(parsed.values()) <= tree_writer.FLUSH_LEAVES + 2, parsed
    parsed.clear()
    from cyxwiz.audit import tree as tree_module

    tree_reads: list[int] = []
    real_pread = tree_module.os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        if fd in (first._writer._tree.file.fd, second._writer._tree.file.fd):  # type: ignore[union-attr]
            tree_reads.append(length)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(tree_module.os, "pread", pread)
    receipts += [(first if turn % 2 else second).record(sample_event(20_000 + turn)) for turn in range(TURNS)]
    assert sum(parsed.values()) == 0, parsed
    # and the frontier moves past the other's record in one read of its nodes, not one per subtree
    assert len(tree_reads) == TURNS and max(tree_reads) <= 10 * 32, tree_reads  # a leaf and its parents
    monkeypatch.undo()
    first.close()
    second.close()

    report = verify_log(log_dir, public_key=TEST_KEY.public_key())
    assert report.ok, report.problems[:3]
    assert report.records == EARLIER + 2 * TURNS
    assert [r.seq for r in receipts] == list(range(EARLIER + 1, EARLIER + 2 * TURNS + 1))
    # the tree both writers kept holds each one's records, under the checkpoint signed at the last close
    for receipt in receipts[-2:]:
        bundle = prove_inclusion(log_dir, receipt.event_id)
        assert (bundle["seq"], bundle["leaf_hash"]) == (receipt.seq, receipt.leaf.hex())
        assert bundle["tree_size"] == EARLIER + 2 * TURNS


def _token(log_dir: Path) -> list[bytes]:
    return (log_dir / ".head").read_bytes().split(b"\n", 1)[0].split(b" ")


def _set_token(log_dir: Path, parts: list[bytes]) -> None:
    head = bytearray((log_dir / ".head").read_bytes())
    token = b" ".join(parts) + b"\n"
    head[: len(token)] = token
    (log_dir / ".head").write_bytes(bytes(head))


@pytest.mark.parametrize(
    "lie",
    [
        "another hash",  # the token names a hash the last line does not carry
        "an earlier line",  # the offset of a line that is not the last
        "mid-line offset",  # an offset inside the last line
        "a seq behind",  # seq and offset of an earlier record, consistently
        "past the end",
        "not numbers",
        "not hex",  # the right length, at the right offset, but not a hash
    ],
)
def test_a_token_that_does_not_match_the_day_files_end_is_not_believed(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch, lie: str
) -> None:
    """``.head`` is anyone's to write: a writer taking over believes its token only where the day file's
    last line begins with that very hash and seq at that offset; else it reads the tail, and the chain it
    continues is the records' (verify: intact; the honest hand-over beside it takes the token)."""
    first = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False)
    second = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False)
    for i in range(5):
        first.record(sample_event(i))
    second.record(sample_event(5))  # second has seen the day: its next turns are hand-overs
    first.record(sample_event(6))
    day, seq, digest, start = _token(log_dir)
    lines = next(log_dir.glob("audit-????-??-??.jsonl")).read_bytes().splitlines(keepends=True)
    earlier_start = sum(len(line) for line in lines[:-2])
    forged = {
        "another hash": [day, seq, b"ab" * 32, start],
        "an earlier line": [day, seq, digest, str(earlier_start).encode()],
        "mid-line offset": [day, seq, digest, str(int(start) + 9).encode()],
        # (not the second writer's own last record: a token equal to what a writer wrote last is its
        # cache hit by design, nothing taken over)
        "a seq behind": [
            day,
            str(int(seq) - 2).encode(),
            lines[-3][9:73],
            str(earlier_start - len(lines[-3])).encode(),
        ],
        "past the end": [day, seq, digest, b"%d" % (int(start) + 10**6)],
        "not numbers": [day, b"x", digest, start],
        "not hex": [day, seq, b"ZZ" * 32, start],
    }[lie]
    parsed = _count_parses(monkeypatch)
    _set_token(log_dir, forged)
    receipt = second.record(sample_event(7))
    # a token naming the last seq with another hash is the old tamper signal: an integrity alert first
    alerted = lie in {"another hash", "not hex"}
    assert receipt.seq == 8 + alerted
    assert parsed[writer.__name__] >= 1, "the forged token was believed"
    # positive control: the next honest hand-over takes the token, parsing nothing
    parsed.clear()
    assert first.record(sample_event(8)).seq == 9 + alerted
    assert sum(parsed.values()) == 0, parsed
    first.close()
    second.close()
    report = verify_log(log_dir, public_key=TEST_KEY.public_key())
    assert [p.kind.value for p in report.problems] == (["tamper-alert"] if alerted else [])
    assert report.records == 9 + alerted


def test_a_token_naming_an_early_offset_costs_no_more_than_the_tail(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged token naming an early line of a long day file would have the writer read the whole file
    to find that line is not the last: it reads no more than the tail's longest read instead."""
    first = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False)
    second = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False)
    second.record(sample_event(0))
    for i in range(1, 200):
        first.record(sample_event(i))
    day_file = next(log_dir.glob("audit-????-??-??.jsonl"))
    second_line = day_file.read_bytes().split(b"\n", 2)[1]
    offset = day_file.read_bytes().index(b"\n") + 1
    monkeypatch.setattr(writer, "_TAIL_CHUNK", writer._TAIL_FIRST_CHUNK)
    assert day_file.stat().st_size > 2 * writer._TAIL_CHUNK
    size = day_file.stat().st_size
    reads: list[tuple[int, int]] = []
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        reads.append((length, offset))
        return real_pread(fd, length, offset)

    monkeypatch.setattr(writer.os, "pread", pread)
    _set_token(log_dir, [_token(log_dir)[0], b"2", second_line[9:73], str(offset).encode()])
    assert second.record(sample_event(200)).seq == 201
    assert (size - offset, offset) not in reads, "read from the token's offset to the end of the file"
    first.close()
    second.close()
    assert verify_log(log_dir, public_key=TEST_KEY.public_key()).ok


def test_writers_taking_turns_share_one_checkpoint_schedule(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint signed by any writer within the interval makes the others' inline one not due: writers
    in many processes taking turns sign about once per interval in all, not once each."""
    first = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False, checkpoint_interval=60)
    second = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False, checkpoint_interval=60)
    first.record(sample_event(1))  # each writer's first record signs
    second.record(sample_event(2))
    assert _signed_size(log_dir) == 2
    signed = _count_signatures(first, monkeypatch)
    first._writer._sign_due = 0.0  # its own minute is up, but the other writer signed just now
    first.record(sample_event(3))
    assert signed == []
    assert first._writer._sign_due == pytest.approx(second._writer.signer.signed_at + 60)
    # positive control: once the last checkpoint any writer signed is older than the interval, it signs
    from cyxwiz.audit.writer import _SIGNED_AT, _SIGNED_AT_FORMAT

    assert second._writer._head_map is not None
    _SIGNED_AT_FORMAT.pack_into(second._writer._head_map, _SIGNED_AT, second._writer.signer.signed_at - 61)
    first._writer._sign_due = 0.0
    first.record(sample_event(4))
    assert signed == [4]
    first.close()
    second.close()
    assert verify_log(log_dir, public_key=TEST_KEY.public_key()).ok


def _count_signatures(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The tree sizes of the checkpoints ``log``'s writer signs from now on."""
    signed: list[int] = []
    real_write = log._writer.signer.write

    def counting_write(**kwargs: Any) -> bytes:
        signed.append(kwargs["size"])
        return real_write(**kwargs)

    monkeypatch.setattr(log._writer.signer, "write", counting_write)
    return signed


def _signed_size(log_dir: Path) -> int:
    from cyxwiz.audit.checkpoint import verify_checkpoint

    return verify_checkpoint((log_dir / "checkpoint").read_bytes(), public_key=TEST_KEY.public_key()).size


def test_a_checkpoint_another_writer_signed_spares_the_timers_signature(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A minute between inline checkpoints: after its first record, a writer's records wait for its timer.
    first = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False, checkpoint_interval=60)
    second = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False, checkpoint_interval=60)
    first.record(sample_event(1))  # its first record signs inline
    first.record(sample_event(2))
    second.record(sample_event(3))  # caught up, it signs records 1..3 inline
    assert _signed_size(log_dir) == 3
    signed = _count_signatures(first, monkeypatch)

    assert first._writer.dirty
    first._checkpoint_unless_covered()  # its records 1..2 are under the other writer's checkpoint
    assert (signed, first._writer.dirty, _signed_size(log_dir)) == ([], False, 3)

    # positive control: a record no checkpoint covers yet is signed
    first.record(sample_event(4))
    first._checkpoint_unless_covered()
    assert (signed, _signed_size(log_dir)) == ([4], 4)

    # a note that claims every record but is signed with another key covers nothing
    from cyxwiz.audit.checkpoint import sign_checkpoint
    from cyxwiz.pki.keys import generate_ed25519

    first.record(sample_event(5))
    forged = sign_checkpoint(
        origin=first._writer.signer.origin, size=10**6, root=b"\0" * 32, key=generate_ed25519()
    )
    (log_dir / "checkpoint").write_bytes(forged)
    first._checkpoint_unless_covered()
    assert (signed, _signed_size(log_dir)) == ([4, 5], 5)
    first.close()
    second.close()
    assert verify_log(log_dir, public_key=TEST_KEY.public_key()).ok


def test_the_timer_checks_no_signature_on_a_note_that_claims_too_few_records(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writers' timers look at the checkpoint several times a second in every process: a note whose
    stated size is below the writer's head cannot cover it, whoever signed it, so it costs no Ed25519
    verify; one that claims enough is believed only once its signature verifies (above)."""
    from cyxwiz.audit import signer as signer_module

    log = AuditLog.open(log_dir, signing_key=TEST_KEY, auto_maintain=False, checkpoint_interval=60)
    log.record(sample_event(1))  # signs inline: the note on disk covers 1
    checked: list[int] = []
    real_verify = signer_module.verify_checkpoint

    def counting_verify(note: bytes, **kwargs: Any) -> Any:
        checked.append(len(note))
        return real_verify(note, **kwargs)

    monkeypatch.setattr(signer_module, "verify_checkpoint", counting_verify)
    signer = log._writer.signer
    assert signer.covers(1) and len(checked) == 1  # positive control: claims enough, verified, covers
    assert not signer.covers(2) and len(checked) == 1  # claims 1 of 2: not covering, nothing verified
    for garbage in (b"", b"origin\n", b"origin\nnot-a-size\nroot\n", b"origin\n-5\nroot\n"):
        (log_dir / "checkpoint").write_bytes(garbage)
        assert not signer.covers(1)
    assert len(checked) == 1
    log.close()
