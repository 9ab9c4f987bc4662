"""Audit log append throughput (issue 4 benchmark).

Ratio = chained appends/s (``AuditLog.record``: serialise, hash-chain, flock, one ``write(2)``) divided by
plain appends/s (``json.dumps`` + ``write`` + ``flush`` per event: also one ``write(2)`` per event), both
with the product's default durability: every record reaches the kernel with its own write, ``fdatasync`` at
most once per second. Measured in the same run on the same disk; best of 3 interleaved rounds. Goal >= 0.5.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from cyxwiz.audit import AuditLog, SecurityEvent, events

N = 20_000


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
    log = AuditLog.open(log_dir, fsync=fsync, auto_maintain=False)  # type: ignore[arg-type]
    started = time.perf_counter()
    for ev in evs:
        log.record(ev)
    elapsed = time.perf_counter() - started
    log.close()
    return len(evs) / elapsed


def run() -> list[tuple[str, float, str]]:
    evs = _events()
    dicts = [ev.model_dump(mode="json") for ev in evs]
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        directory = Path(tmp)
        plain = chained = plain_sync = chained_sync = 0.0
        for _ in range(3):
            plain = max(plain, _plain(directory, dicts, sync_every=1.0))
            chained = max(chained, _chained(directory, evs, fsync="interval"))
        small = evs[:500]
        for _ in range(2):
            plain_sync = max(plain_sync, _plain(directory, dicts[:500], sync_every=0.0))
            chained_sync = max(chained_sync, _chained(directory, small, fsync="always"))
    return [
        (
            "chained/plain appends (default)",
            chained / plain,
            f"{chained:,.0f}/s vs {plain:,.0f}/s; write(2) per event, fdatasync <=1/s in both",
        ),
        (
            "chained/plain appends (fsync each)",
            chained_sync / plain_sync,
            f"{chained_sync:,.0f}/s vs {plain_sync:,.0f}/s; fdatasync after every event in both",
        ),
    ]


if __name__ == "__main__":
    for label, ratio, why in run():
        print(f"{label:<40} {ratio:6.3f}  {why}")
