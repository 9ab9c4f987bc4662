"""A writer's side of the Merkle tree: frontier in memory, nodes batched to ``merkle.tree`` (SPEC H4).

Appending a record costs a list append (its leaf hash is the record's chain hash); every
:data:`FLUSH_LEAVES` records the batch is hashed into the frontier (about one node hash per record) and its
nodes go to disk in one ``write(2)``, and always before a checkpoint is signed (so the stored tree
always covers every signed checkpoint: proofs never wait), at rotation and at close. The records are the
truth and the tree is derived from them, so a buffer lost in a crash, or made stale because another
process appended and caught the tree up first, costs nothing but a catch-up: the next writer hashes the
records the tree lacks from the end of the open day (:meth:`TreeWriter.sync`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cyxwiz.audit.merkle import HASH_SIZE, Frontier, node_hash, nodes_for
from cyxwiz.audit.reader import iter_raw_records
from cyxwiz.audit.records import RecordFormatError, leaf_of, parse_line
from cyxwiz.audit.tree import TreeFile, size_for_nodes
from cyxwiz.errors import AuditIntegrityError

#: Records per batch: bounds what a crash or a hand-over to another process costs to recompute.
FLUSH_LEAVES = 64
_CATCH_UP_CHUNK = 4 * 1024 * 1024
#: the first read of a catch-up from the end of the day file (grown fourfold up to the chunk above)
_TAIL_FIRST_CHUNK = 16 * 1024


class TreeWriter:
    def __init__(self, *, directory: Path) -> None:
        self.directory = directory
        self.file = TreeFile.open(directory, writable=True)
        self.frontier: Frontier | None = None  # None: unknown, reload from the file
        self._leaves: list[bytes] = []  # leaves not yet hashed into the frontier and written
        self._flushed_nodes = -1  # node count of the file as we last left it

    @property
    def size(self) -> int:
        return self.frontier.size + len(self._leaves) if self.frontier is not None else -1

    def add(self, leaf: bytes) -> None:
        """Append one leaf (the caller holds the write lock and synced first). Its nodes are computed
        with the batch, in one tight loop, when the batch is flushed."""
        leaves = self._leaves
        leaves.append(leaf)
        if len(leaves) >= FLUSH_LEAVES:
            self.flush()

    def flush(self) -> bool:
        """Hash the batch into the frontier and write its nodes; False (and forget everything) if the file
        moved unexpectedly.

        A process that only synced (a checkpoint, a close) may have caught the file up with some of these
        nodes already: positions are deterministic, so those are skipped, never written twice.
        """
        if not self._leaves:
            return True
        frontier = self.frontier
        assert frontier is not None
        levels, hashes = frontier.levels, frontier.hashes
        made = bytearray()
        for leaf in self._leaves:
            made += leaf
            level, node = 0, leaf
            while levels and levels[-1] == level:
                levels.pop()
                node = node_hash(hashes.pop(), node)
                level += 1
                made += node
            levels.append(level)
            hashes.append(node)
        frontier.size += len(self._leaves)
        self._leaves.clear()
        stored = self.file.stored_nodes()
        start, count = self._flushed_nodes, len(made) // HASH_SIZE
        if not start <= stored <= start + count:
            self.forget()
            return False
        self.file.append((bytes(made[(stored - start) * HASH_SIZE :]),))
        self._flushed_nodes = start + count
        return True

    def forget(self) -> None:
        """Something failed mid-record: reload from the file next time."""
        self.frontier = None
        self._leaves.clear()
        self._flushed_nodes = -1

    def sync(self, n: int, day_fd: int) -> None:
        """Under the write lock: make the stored tree hold exactly records 1..``n`` and load the frontier.

        ``day_fd`` is the open day file, where the records a lagging tree lacks normally are.
        """
        self.flush()  # our buffered nodes, unless another writer already went past them
        stored = self.file.stored_nodes()
        whole = stored == nodes_for(n)
        if self.frontier is not None and self.frontier.size == n and whole:
            self._flushed_nodes = stored
            return
        # (the common case, the other writer's nodes stored with its records, needs no search for the size)
        have = n if whole else min(size_for_nodes(stored), n)
        if stored != nodes_for(have):
            self.file.truncate(have)  # nodes of a record that never landed, or a torn write
        known = self.frontier
        # another writer's records since ours (a hand-over): ours still stand, theirs are read in one piece
        frontier = self.file.advance(known, have) if known is not None else self.file.frontier(have)
        if have < n:
            leaves = _tail_leaves(day_fd, have, n) or _all_leaves(self.directory, have, n)
            if len(leaves) != n - have:
                raise AuditIntegrityError(
                    f"the Merkle tree covers {have} records but the log has {n}, and the records needed to "
                    "rebuild it are gone; run `cyxwiz audit verify`",
                    path=str(self.file.path),
                    rule="H4",
                )
            made = bytearray()
            for leaf in leaves:
                for node in frontier.append(leaf):
                    made += node
            self.file.append((bytes(made),))
        self.frontier = frontier
        self._flushed_nodes = nodes_for(n)

    def close(self) -> None:
        self.file.close()


def _tail_leaves(fd: int, have: int, n: int) -> list[bytes]:
    """Leaves of records have+1..n from the end of the open day file, or [] if they are not all there.

    Read backwards from the end, parsing only the ``n - have`` last records: when two processes take turns
    appending, each turn's catch-up is the other's few unflushed records, not every record of a 4 MiB tail
    (which cost each hand-over milliseconds on a busy day's file). Anything else than exactly
    have+1..n there gives [] and the caller's full scan.
    """
    size, wanted = os.fstat(fd).st_size, n - have
    chunk = _TAIL_FIRST_CHUNK
    while True:
        start = max(0, size - chunk)
        lines = os.pread(fd, size - start, start).split(b"\n")
        # the piece after the last newline is unterminated (a write in progress or torn): never a record;
        # the first piece of a chunk that starts mid-file may be a partial line
        complete = lines[1:-1] if start > 0 else lines[:-1]
        found: list[tuple[int, bytes]] = []
        for raw in reversed(complete):
            try:
                found.append((parse_line(raw).seq, raw))
            except RecordFormatError:
                continue
            if len(found) == wanted:
                break
        if len(found) == wanted or start == 0 or chunk >= _CATCH_UP_CHUNK:
            break
        chunk *= 4
    found.reverse()
    if [s for s, _ in found] != list(range(have + 1, n + 1)):
        return []
    return [leaf_of(raw) for _, raw in found]


def _all_leaves(directory: Path, have: int, n: int) -> list[bytes]:
    leaves: list[bytes] = []
    for seq, raw in iter_raw_records(directory):
        if seq == have + len(leaves) + 1 and seq <= n:
            leaves.append(leaf_of(raw))
    return leaves
