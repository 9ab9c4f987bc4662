"""Audit log benchmarks (issue 4, issue 19).

1. Append ratio = appends/s of the transparency log (``AuditLog.record``: serialise, hash-chain = Merkle
   leaf, tree nodes, flock, one ``write(2)``, signed C2SP checkpoints every 0.1 s and at close) divided by
   plain appends/s (``json.dumps`` + ``write`` + ``flush`` per event: also one ``write(2)`` per event), both
   with the product's default durability: every record reaches the kernel with its own write,
   ``fdatasync`` at most once per second. Same run, same disk: median of 9 back-to-back round pairs.
   Goal >= 0.5.
2. Inclusion proof for one event in a 1,000,000-event log: median time to open the stored tree and build
   the RFC 6962 audit path (the fixture's tree is built from generated leaf hashes, not JSON records: the
   proof never reads records). Goal <= 5 ms. The offline verification of the same proof is reported too.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.audit import AuditLog, SecurityEvent, events

N = 20_000
_KEY = Ed25519PrivateKey.generate()


def _events() -> list[SecurityEvent]:
    out = []
    for i in range(N):
        if i % 2:
            out.append(
                events.auth_attempt(
                    actor_id=f"user-{i}",
                    actor_type="user",
                    success=i % 3 != 0,
                    method="jwt",
                    ip_address="10.1.2.3",
                )
            )
        else:
            out.append(
                events.payment(action="escrow.release", job_id=f"job-{i}", amount_lamports=5_000_000 + i)
            )
    return out


def _plain(directory: Path, dicts: list[dict[str, object]], *, sync_every: float | None) -> float:
    path = directory / "plain.jsonl"
    last_sync = time.monotonic()
    started = time.perf_counter()
    with path.open("ab") as fh:
        for d in dicts:
            fh.write(json.dumps(d).encode() + b"\n")
            fh.flush()
            if sync_every is not None:
                now = time.monotonic()
                if now - last_sync >= sync_every:
                    os.fdatasync(fh.fileno())
                    last_sync = now
    elapsed = time.perf_counter() - started
    path.unlink()
    return len(dicts) / elapsed


def _chained(directory: Path, evs: list[SecurityEvent], *, fsync: str) -> float:
    log_dir = directory / f"log-{time.monotonic_ns()}"
    log = AuditLog.open(log_dir, signing_key=_KEY, fsync=fsync, auto_maintain=False)  # type: ignore[arg-type]
    started = time.perf_counter()
    for ev in evs:
        log.record(ev)
    elapsed = time.perf_counter() - started
    log.close()
    return len(evs) / elapsed


def _taking_turns(directory: Path, evs: list[SecurityEvent], *, earlier: int) -> tuple[float, float]:
    """(records/s of two writers taking turns, of one writer) on a day file ``earlier`` records long: the
    lifecycle process and the verifier service hand the log to each other at every escrow move."""
    log_dir = directory / f"turns-{time.monotonic_ns()}"
    first = AuditLog.open(log_dir, signing_key=_KEY, auto_maintain=False)
    second = AuditLog.open(log_dir, signing_key=_KEY, auto_maintain=False)
    for ev in evs[:earlier]:
        first.record(ev)
    rates = []
    for writers in ((first, second), (first,)):
        batch = evs[earlier : earlier + 2000]
        started = time.perf_counter()
        for i, ev in enumerate(batch):
            writers[i % len(writers)].record(ev)
        rates.append(len(batch) / (time.perf_counter() - started))
    first.close()
    second.close()
    return rates[0], rates[1]


def _rounds(
    directory: Path, evs: list[SecurityEvent], *, rounds: int, sync_each: bool
) -> tuple[float, float, float]:
    """Median of per-round ratios (each round times both back to back, so load drift cancels out)."""
    dicts = [ev.model_dump(mode="json") for ev in evs]
    ratios, plains, chaineds = [], [], []
    for _ in range(rounds):
        plain = _plain(directory, dicts, sync_every=0.0 if sync_each else 1.0)
        chained = _chained(directory, evs, fsync="always" if sync_each else "interval")
        ratios.append(chained / plain)
        plains.append(plain)
        chaineds.append(chained)
    return statistics.median(ratios), statistics.median(chaineds), statistics.median(plains)


def _tree_fixture(directory: Path, size: int) -> None:
    """A stored tree of ``size`` leaves, written the way writers batch it."""
    import hashlib

    from cyxwiz.audit.merkle import Frontier
    from cyxwiz.audit.tree import TreeFile

    tree = TreeFile.open(directory, writable=True)
    frontier = Frontier()
    batch: list[bytes] = []
    for i in range(size):
        batch.extend(frontier.append(hashlib.sha256(b"\x00record %d" % i).digest()))
        if len(batch) >= 65536:
            tree.append(batch)
            batch = []
    tree.append(batch)
    tree.close()


def _proof_times(directory: Path, size: int, samples: int) -> tuple[float, float]:
    """Median ms to open the tree and build one inclusion proof; median ms to verify it offline."""
    import random

    from cyxwiz.audit.merkle import inclusion_proof, verify_inclusion
    from cyxwiz.audit.tree import TREE_FILE, MappedTree

    with MappedTree(directory / TREE_FILE) as whole:
        root = whole.node(0, 0) if size == 1 else _root(whole, size)
    rng = random.Random(19)
    build, check = [], []
    for _ in range(samples):
        index = rng.randrange(size)
        started = time.perf_counter()
        with MappedTree(directory / TREE_FILE) as tree:
            proof = inclusion_proof(tree, index, size)
            leaf = tree.leaf(index)
        build.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert verify_inclusion(leaf=leaf, index=index, size=size, proof=proof, root=root)
        check.append(time.perf_counter() - started)
    return statistics.median(build) * 1000, statistics.median(check) * 1000


def _root(tree: object, size: int) -> bytes:
    from cyxwiz.audit.merkle import subtree_root

    return subtree_root(tree, 0, size)  # type: ignore[arg-type]


PROOF_LOG = 1_000_000


def run() -> list[tuple[str, float, str]]:
    evs = _events()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        directory = Path(tmp)
        _rounds(directory, evs[:2000], rounds=1, sync_each=False)  # warm-up
        ratio, chained, plain = _rounds(directory, evs[:5000], rounds=9, sync_each=False)
        ratio_sync, chained_sync, plain_sync = _rounds(directory, evs[:300], rounds=5, sync_each=True)
        turns, alone = _taking_turns(directory, evs, earlier=10_000)
        tree_dir = directory / "tree"
        tree_dir.mkdir()
        started = time.perf_counter()
        _tree_fixture(tree_dir, PROOF_LOG)
        built_s = time.perf_counter() - started
        proof_ms, check_ms = _proof_times(tree_dir, PROOF_LOG, samples=501)
    return [
        (
            "merkle+checkpoints/plain appends (default)",
            ratio,
            f"{chained:,.0f}/s vs {plain:,.0f}/s; write(2) per event, fdatasync <=1/s in both",
        ),
        (
            "merkle+checkpoints/plain appends (fsync each)",
            ratio_sync,
            f"{chained_sync:,.0f}/s vs {plain_sync:,.0f}/s; fdatasync after every event in both",
        ),
        (
            "two writers taking turns/one writer",
            turns / alone,
            f"{turns:,.0f}/s vs {alone:,.0f}/s on a 10,000-record day: each turn finds the head in the "
            "other writer's token (checked against the day file's last line) and the tree flushed",
        ),
        (
            "inclusion proof, 1M-event log (ms)",
            proof_ms,
            f"median of 501: open the stored tree + build the audit path; offline check {check_ms:.3f} ms; "
            f"fixture built in {built_s:.1f} s",
        ),
    ]


if __name__ == "__main__":
    for label, ratio, why in run():
        print(f"{label:<40} {ratio:6.3f}  {why}")
