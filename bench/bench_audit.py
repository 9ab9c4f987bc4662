"""Audit log append throughput (issue 4 benchmark).

Ratio = chained appends/s (``AuditLog.record``: serialise, hash-chain, flock, one ``write(2)``) divided by
plain appends/s (``json.dumps`` + ``write`` + ``flush`` per event: also one ``write(2)`` per event), both
with the product's default durability: every record reaches the kernel with its own write, ``fdatasync`` at
most once per second. Measured in the same run on the same disk: median of 9 back-to-back round pairs.
Goal >= 0.5.
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


def run() -> list[tuple[str, float, str]]:
    evs = _events()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        directory = Path(tmp)
        _rounds(directory, evs[:2000], rounds=1, sync_each=False)  # warm-up
        ratio, chained, plain = _rounds(directory, evs[:5000], rounds=9, sync_each=False)
        ratio_sync, chained_sync, plain_sync = _rounds(directory, evs[:300], rounds=5, sync_each=True)
    return [
        (
            "chained/plain appends (default)",
            ratio,
            f"{chained:,.0f}/s vs {plain:,.0f}/s; write(2) per event, fdatasync <=1/s in both",
        ),
        (
            "chained/plain appends (fsync each)",
            ratio_sync,
            f"{chained_sync:,.0f}/s vs {plain_sync:,.0f}/s; fdatasync after every event in both",
        ),
    ]


if __name__ == "__main__":
    for label, ratio, why in run():
        print(f"{label:<40} {ratio:6.3f}  {why}")
