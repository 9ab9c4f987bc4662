"""Proofs (H4): RFC 6962 inclusion and consistency proofs out of the stored tree, checked by the pure
verifiers; random logs, random truncation points; `cyxwiz audit prove | consistency | check-proof`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cyxwiz.audit import AuditLog
from cyxwiz.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from cyxwiz.audit.proofs import check_bundle, leaf_hash_of, prove_consistency, prove_inclusion
from cyxwiz.audit.records import CHECKPOINT_FILE
from cyxwiz.audit.tree import TreeFile
from cyxwiz.audit.verify import Kind, verify_log
from cyxwiz.cli import app
from cyxwiz.errors import AuditIntegrityError
from tests.audit.conftest import TEST_KEY, ManualClock, sample_event
from tests.audit.tamper import edit_lines

PUB = TEST_KEY.public_key()
runner = CliRunner()
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class _Nodes:
    """Perfect-subtree hashes from a plain list of leaves (the reference the stored tree must match)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves

    def node(self, level: int, index: int) -> bytes:
        return root_of(self.leaves[index << level : (index + 1) << level])


@QUICK
@given(
    n=st.integers(1, 300),
    picks=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=6),
)
def test_stored_tree_proofs_round_trip(tmp_path: Path, n: int, picks: list[tuple[int, int]]) -> None:
    leaves = [leaf_hash(b"record %d" % i) for i in range(n)]
    directory = tmp_path / f"t{n}"
    directory.mkdir(exist_ok=True)
    tree = TreeFile.open(directory, writable=True)
    tree.truncate(0)
    frontier = Frontier()
    for leaf in leaves:
        tree.append(frontier.append(leaf))
    assert frontier.root() == root_of(leaves)
    for a, b in picks:
        size = 1 + a % n
        index = b % size
        root = root_of(leaves[:size])
        proof = inclusion_proof(tree, index, size)
        assert proof == inclusion_proof(_Nodes(leaves), index, size)
        assert verify_inclusion(leaf=leaves[index], index=index, size=size, proof=proof, root=root)
        wrong = leaves[(index + 1) % size]
        assert size == 1 or not verify_inclusion(leaf=wrong, index=index, size=size, proof=proof, root=root)
        short = proof[:-1]
        assert size == 1 or not verify_inclusion(
            leaf=leaves[index], index=index, size=size, proof=short, root=root
        )
        old = b % (size + 1)
        cproof = consistency_proof(tree, old, size)
        old_root = root_of(leaves[:old]) if old else EMPTY_ROOT
        assert verify_consistency(old_size=old, new_size=size, old_root=old_root, new_root=root, proof=cproof)
        if 0 < old < size:
            bent = leaf_hash(b"forged")
            assert not verify_consistency(
                old_size=old,
                new_size=size,
                old_root=root_of([bent, *leaves[1:old]]),
                new_root=root,
                proof=cproof,
            )
    tree.close()


@QUICK
@given(n=st.integers(1, 3000), data=st.data())
def test_the_frontier_advances_in_one_read(
    tmp_path: Path, n: int, data: st.DataObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer taking the log over moves its frontier past the other's records: the same frontier as
    one read per subtree (the reference), from one read of the nodes written since; a long way, or a
    frontier ahead of the size, falls back to the reference."""
    from cyxwiz.audit import tree as tree_module

    directory = tmp_path / f"a{n}"
    directory.mkdir(exist_ok=True)
    tree = TreeFile.open(directory, writable=True)
    tree.truncate(0)
    frontier = Frontier()
    for i in range(n):
        tree.append(frontier.append(leaf_hash(b"record %d" % i)))
    new = data.draw(st.integers(0, n))
    old = data.draw(st.integers(max(0, new - data.draw(st.sampled_from([1, 3, 64, 5000]))), new))
    reads: list[int] = []
    real_pread = tree_module.os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        reads.append(length)
        return real_pread(fd, length, offset)

    start = tree.frontier(old)
    monkeypatch.setattr(tree_module.os, "pread", pread)
    moved = tree.advance(start, new)
    reference = tree.frontier(new)
    assert (moved.size, moved.levels, moved.hashes) == (reference.size, reference.levels, reference.hashes)
    if new - old <= 500:
        assert len(reads) == (new > old) + new.bit_count()  # one for the advance, then the reference's
    behind = tree.advance(reference, old)  # a frontier past the size asked for: the reference's reads
    assert (behind.size, behind.hashes) == (old, start.hashes)
    monkeypatch.undo()
    tree.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 30), data=st.data())
def test_random_log_random_truncation_point_is_detected(
    tmp_path_factory: pytest.TempPathFactory, n: int, data: st.DataObject
) -> None:
    from datetime import UTC, datetime

    log_dir = tmp_path_factory.mktemp("trunc") / "audit"
    clock = ManualClock(datetime(2026, 11, 20, 10, tzinfo=UTC))
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        receipts = [log.record(sample_event(i)) for i in range(n)]
    assert verify_log(log_dir, public_key=PUB).ok
    keep = data.draw(st.integers(0, n - 1))
    day = log_dir / "audit-2026-11-20.jsonl"
    edit_lines(day, lambda ls: ls[:keep])
    (log_dir / ".head").unlink()
    report = verify_log(log_dir, public_key=PUB)
    assert not report.ok and Kind.TRUNCATED in {p.kind for p in report.problems}
    assert receipts[-1].seq == n


def test_receipt_inclusion_bundle_and_offline_check(log_dir: Path, clock: ManualClock) -> None:
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        receipts = [log.record(sample_event(i)) for i in range(13)]
    target = receipts[6]
    assert leaf_hash_of(log_dir, target.event_id) == target.leaf_hash
    assert prove_inclusion(log_dir, target.leaf_hash)["seq"] == 7  # a memo's audit= leaf finds it too
    bundle = prove_inclusion(log_dir, target.event_id)
    assert bundle["seq"] == 7 and bundle["tree_size"] == 13 and bundle["leaf_hash"] == target.leaf_hash
    assert check_bundle(json.loads(json.dumps(bundle)), public_key=PUB).size == 13
    forged = dict(bundle, record=bundle["record"].replace("user-6", "user-X"))
    with pytest.raises(AuditIntegrityError):
        check_bundle(forged, public_key=PUB)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with pytest.raises(AuditIntegrityError, match="another key"):
        check_bundle(bundle, public_key=Ed25519PrivateKey.generate().public_key())


@pytest.fixture
def pubkey_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.pub"
    path.write_bytes(
        PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def test_cli_prove_consistency_and_check_proof(
    log_dir: Path, clock: ManualClock, tmp_path: Path, pubkey_file: Path
) -> None:
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        first = log.record(sample_event(1))
        old_note = log.checkpoint()
        for i in range(20):
            log.record(sample_event(i))
    old = tmp_path / "old.checkpoint"
    old.write_bytes(old_note)
    new = log_dir / CHECKPOINT_FILE
    result = runner.invoke(
        app, ["audit", "prove", first.event_id, "--dir", str(log_dir), "--public-key", str(pubkey_file)]
    )
    assert result.exit_code == 0, result.output
    bundle_file = tmp_path / "proof.json"
    bundle_file.write_text(result.stdout)
    checked = runner.invoke(app, ["audit", "check-proof", str(bundle_file), "--public-key", str(pubkey_file)])
    assert checked.exit_code == 0 and checked.stdout.startswith("OK: inclusion proof holds"), checked.output
    cons = runner.invoke(
        app,
        ["audit", "consistency", str(old), str(new), "--dir", str(log_dir), "--public-key", str(pubkey_file)],
    )
    assert cons.exit_code == 0, cons.output
    assert json.loads(cons.stdout)["type"] == "consistency"
    # attack: a bundle whose record was edited is INVALID (exit 1), a missing key is a one-line error
    data = json.loads(result.stdout)
    data["record"] = data["record"].replace('"seq":1', '"seq":1 ')
    bundle_file.write_text(json.dumps(data))
    bad = runner.invoke(app, ["audit", "check-proof", str(bundle_file), "--public-key", str(pubkey_file)])
    assert bad.exit_code == 1 and bad.stdout.startswith("INVALID:")
    nokey = runner.invoke(
        app, ["audit", "check-proof", str(bundle_file)], env={"CYXWIZ_AUDIT_PUBLIC_KEY": ""}
    )
    assert nokey.exit_code == 2 and "--public-key" in nokey.stderr


def test_consistency_refuses_a_rewritten_history(log_dir: Path, clock: ManualClock, tmp_path: Path) -> None:
    """A party's old checkpoint is not a prefix of the log after records were rewritten and re-signed."""
    with AuditLog.open(log_dir, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        for i in range(5):
            log.record(sample_event(i))
        old_note = log.checkpoint()
    other = tmp_path / "other"
    with AuditLog.open(other, signing_key=TEST_KEY, clock=clock, auto_maintain=False) as log:
        for i in range(9):
            log.record(sample_event(100 + i))
    bundle = prove_consistency(other, old_note, (other / CHECKPOINT_FILE).read_bytes())
    with pytest.raises(AuditIntegrityError, match="not a prefix"):
        check_bundle(bundle, public_key=PUB)
    old_file = tmp_path / "old.checkpoint"
    old_file.write_bytes(old_note)
    cli = runner.invoke(
        app,
        ["audit", "consistency", str(old_file), str(other / CHECKPOINT_FILE), "--dir", str(other)],
        env={"CYXWIZ_AUDIT_PUBLIC_KEY": ""},
    )
    assert cli.exit_code == 1 and cli.stdout.startswith("NOT CONSISTENT")  # even without the key
