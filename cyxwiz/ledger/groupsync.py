"""Group commit of the escrow intent log on SQLite: one fsync makes every queued intent durable.

Every intent must be on disk before its transaction is sent (F2). With ``synchronous=FULL`` each commit
pays its own fsync, so escrows in flight at once queue behind each other's disk flushes. Here commits
run with ``synchronous=NORMAL`` (written to the WAL, not yet flushed) and each writer then calls
:meth:`WalSync.sync`, which returns only once an fsync of the WAL file that *started after its commit*
has finished. One writer leads and flushes once for all who committed before it started; whoever commits
while that flush runs is covered by the next one. No artificial delay: on a loaded host a 0.5 ms sleep
lasts tens of ms, and the flush itself is the window. fdatasync flushes the file, whichever descriptor
wrote it; a checkpoint in between already synced what it moved into the database file (SQLite syncs both
around a checkpoint at ``NORMAL``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class WalSync:
    def __init__(self, database: Path, *, window_s: float = 0.0) -> None:
        self.wal = Path(f"{database}-wal")
        self.window_s = window_s
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out (each after its writer's commit)
        self._synced = 0  # every ticket up to this one is durable
        self._leading = False
        #: how many fsyncs ran, and for how many commits (the bench reads these)
        self.flushes = 0
        self.commits = 0

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            self.commits += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                self._cond.release()
                try:
                    if self.window_s:
                        time.sleep(self.window_s)  # let concurrent escrows commit into this flush
                    with self._cond:
                        covered = self._requested
                    self._flush()
                finally:
                    self._cond.acquire()
                    self._leading = False
                self._synced = max(self._synced, covered)
                self.flushes += 1
                self._cond.notify_all()

    def _flush(self) -> None:
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: the last checkpoint synced everything into the database file
        try:
            # the WAL's bytes and its size; its times need no flush (what SQLite's own WAL sync does)
            os.fdatasync(fd)
        finally:
            os.close(fd)
