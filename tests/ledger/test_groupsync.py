"""Group commit of the intent log (F2 kept): one fsync covers every intent committed before it started."""

from __future__ import annotations

import threading
from pathlib import Path

from cyxwiz.ledger.groupsync import WalSync


def test_one_flush_covers_every_writer_that_committed_while_another_flushed(tmp_path: Path) -> None:
    (tmp_path / "db-wal").write_bytes(b"wal")
    wal = WalSync(tmp_path / "db")
    release = threading.Event()
    flushed: list[int] = []
    real_flush = wal._flush

    def slow_first_flush() -> None:
        if not flushed:
            release.wait(30)  # the first flush is slow: four more writers commit meanwhile
        flushed.append(wal._requested)
        real_flush()

    wal._flush = slow_first_flush  # type: ignore[method-assign]
    first = threading.Thread(target=wal.sync)
    first.start()
    while wal._requested < 1:
        threading.Event().wait(0.001)
    others = [threading.Thread(target=wal.sync) for _ in range(4)]
    for thread in others:
        thread.start()
    while wal._requested < 5:
        threading.Event().wait(0.001)
    release.set()
    for thread in (first, *others):
        thread.join(30)
    assert (wal.commits, wal.flushes) == (5, 2)  # five durable commits, two fsyncs
    assert flushed == [5, 5]  # the second flush started after all five had committed


def test_sync_without_a_wal_file_returns(tmp_path: Path) -> None:
    wal = WalSync(tmp_path / "absent")
    wal.sync()
    assert wal.flushes == 1
