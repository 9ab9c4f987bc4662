"""The Merkle tree on disk, beside the JSONL days (SPEC H4): ``merkle.tree`` in the log directory.

Every perfect subtree's hash is stored once, 32 bytes, in *post-order*: appending leaf ``i`` writes the
leaf hash followed by each parent it completes, so one record costs one ``write(2)`` of 32–64 bytes on
average, and the file is append-only like the day files. Node (level ``k``, index ``j``) is the last node
written when leaf ``(j+1)·2^k − 1`` arrived, at position ``2(m−1) − popcount(m−1) + k`` with
``m = (j+1)·2^k``. So any perfect subtree is one read, an inclusion or consistency proof is O(log² n)
reads (O(log n) in the common case), and proofs never need the records themselves.

The tree is derived data: the JSONL records are the truth. Writers append tree nodes *before* the record
line under the same lock, so after a crash the tree is at most one record ahead, and the next writer
truncates it back (:meth:`TreeFile.repair`). ``verify`` recomputes every leaf from the records and
compares (:mod:`cyxwiz.audit.verify`).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from pathlib import Path

from cyxwiz.audit.merkle import HASH_SIZE, Frontier, nodes_for
from cyxwiz.errors import AuditIntegrityError
from cyxwiz.shared_dir import file_mode

TREE_FILE = "merkle.tree"
#: the most nodes :meth:`TreeFile.advance` reads at once (64 KiB); further is one read per subtree
_ADVANCE_NODES = 2048


def node_position(level: int, index: int) -> int:
    m = (index + 1) << level
    return 2 * (m - 1) - (m - 1).bit_count() + level


def size_for_nodes(count: int) -> int:
    """The largest tree size whose nodes fit in ``count`` stored nodes."""
    size = count // 2
    while nodes_for(size + 1) <= count:
        size += 1
    while size and nodes_for(size) > count:
        size -= 1
    return size


class TreeFile:
    """Read and append the stored tree through one file descriptor (the writer's, or a reader's)."""

    def __init__(self, *, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, directory: Path, *, writable: bool) -> TreeFile:
        path = directory / TREE_FILE
        if writable:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, file_mode(path.parent))
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return cls(fd=fd, path=path)

    def stored_nodes(self) -> int:
        return os.fstat(self.fd).st_size // HASH_SIZE

    def node(self, level: int, index: int) -> bytes:
        pos = node_position(level, index) * HASH_SIZE
        data = os.pread(self.fd, HASH_SIZE, pos)
        if len(data) != HASH_SIZE:
            raise AuditIntegrityError(
                f"Merkle tree file ends before node ({level}, {index})", path=str(self.path), rule="H4"
            )
        return data

    def frontier(self, size: int) -> Frontier:
        """The frontier of the stored tree at ``size`` leaves (one read per set bit of ``size``)."""
        hashes, start = [], 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                hashes.append(self.node(level, start >> level))
                start += 1 << level
        return Frontier(size=size, hashes=hashes)

    def advance(self, old: Frontier, size: int) -> Frontier:
        """The frontier at ``size`` from ``old``, one of the same stored tree at a size not above it, in
        one read: a subtree of the new frontier that ends before ``old``'s size is one of ``old``'s
        (the binary digits above it agree), and every other one was completed by a later leaf, so it is
        stored among the nodes written since ``old``'s size. A writer taking the log over from another
        process moves its frontier past the other's few records this way instead of one read per set bit
        of ``size``; a long way (or an ``old`` that does not fit) is :meth:`frontier`."""
        if old.size == size:
            return Frontier(size=size, hashes=old.hashes)
        base, end = nodes_for(old.size), nodes_for(size)
        if not old.size <= size or end - base > _ADVANCE_NODES or len(old.levels) != len(old.hashes):
            return self.frontier(size)
        block = os.pread(self.fd, (end - base) * HASH_SIZE, base * HASH_SIZE)
        if len(block) != (end - base) * HASH_SIZE:
            raise AuditIntegrityError(
                f"Merkle tree file ends before the nodes of {size} leaves", path=str(self.path), rule="H4"
            )
        # the two sizes agree on every binary digit from ``low`` up: those subtrees are the old ones
        low = (old.size ^ size).bit_length()
        hashes = old.hashes[: (size >> low).bit_count()]
        start = size >> low << low
        for level in range(low - 1, -1, -1):
            if size >> level & 1:
                at = (node_position(level, start >> level) - base) * HASH_SIZE
                hashes.append(block[at : at + HASH_SIZE])
                start += 1 << level
        return Frontier(size=size, hashes=hashes)

    def append(self, nodes: Iterable[bytes]) -> None:
        data = b"".join(nodes)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, nodes_for(size) * HASH_SIZE)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MappedTree:
    """Read-only, memory-mapped view of a stored tree for proofs (no system call per node)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            length = os.fstat(fh.fileno()).st_size
            self._map: mmap.mmap | None = (
                mmap.mmap(fh.fileno(), length, access=mmap.ACCESS_READ) if length else None
            )
        self.stored_nodes = length // HASH_SIZE
        self.size = size_for_nodes(self.stored_nodes)

    def node(self, level: int, index: int) -> bytes:
        pos = node_position(level, index) * HASH_SIZE
        if self._map is None or pos + HASH_SIZE > self.stored_nodes * HASH_SIZE:
            raise AuditIntegrityError(
                f"Merkle tree file ends before node ({level}, {index})", path=str(self.path), rule="H4"
            )
        return self._map[pos : pos + HASH_SIZE]

    def leaf(self, index: int) -> bytes:
        return self.node(0, index)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> MappedTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
