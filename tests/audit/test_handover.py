"""Two writers taking turns on one log, as a lifecycle process and the verifier service do at every escrow
move: each hand-over catches the chain head and the Merkle tree up from the end of the day file, reading
only what the other writer appended, however long the day's file already is (H3, H4; issue 17's speed)."""

from __future__ import annotations

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
    # Each turn re-reads the other's last record and the leaves the tree lacks: a few lines, where a
    # catch-up that parsed the whole tail read hundreds of records per turn.
    assert 0 < sum(parsed.values()) <= 4 * TURNS, parsed
    first.close()
    second.close()

    report = verify_log(log_dir, public_key=TEST_KEY.public_key())
    assert report.ok, report.problems[:3]
    assert report.records == EARLIER + TURNS
    assert [r.seq for r in receipts] == list(range(EARLIER + 1, EARLIER + TURNS + 1))
    # the tree both writers kept holds each one's records, under the checkpoint signed at the last close
    for receipt in receipts[-2:]:
        bundle = prove_inclusion(log_dir, receipt.event_id)
        assert (bundle["seq"], bundle["leaf_hash"]) == (receipt.seq, receipt.leaf.hex())
        assert bundle["tree_size"] == EARLIER + TURNS


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
    signed: list[int] = []
    real_write = first._writer.signer.write

    def counting_write(**kwargs: Any) -> bytes:
        signed.append(kwargs["size"])
        return real_write(**kwargs)

    monkeypatch.setattr(first._writer.signer, "write", counting_write)

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
