"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs, and the offline proof verifiers (SPEC H4).

Hashing: ``leaf = SHA-256(0x00 || canonical record bytes)`` (:func:`cyxwiz.audit.records.leaf_of`),
``node = SHA-256(0x01 || left || right)``, the empty tree's root is ``SHA-256("")``. A tree of ``n``
leaves splits at ``k``, the largest power of two below ``n`` (RFC 6962 §2.1).

The two verifiers at the bottom, :func:`verify_inclusion` and :func:`verify_consistency`, are pure
functions: given a checkpoint (tree size + root, whose signature :mod:`cyxwiz.audit.checkpoint` checks)
and a proof, they decide without any access to the log. They follow RFC 9162 §2.1.3.2 and §2.1.4.2
step by step, so any RFC 6962 implementation produces proofs they accept::

    from cyxwiz.audit.merkle import verify_inclusion
    ok = verify_inclusion(leaf=leaf_of(record_line), index=seq - 1, size=cp.size, proof=proof, root=cp.root)

Proof *generation* needs the hashes of perfect subtrees; :class:`NodeSource` is how it asks for them
(the on-disk tree in :mod:`cyxwiz.audit.tree` answers each with one read).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """The RFC 6962 leaf hash of ``data`` (for a record: its canonical bytes, see ``records.leaf_of``)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def nodes_for(size: int) -> int:
    """How many perfect-subtree nodes a tree of ``size`` leaves stores (leaves included)."""
    return 2 * size - size.bit_count()


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root over leaf hashes by the RFC's recursive definition (the reference the tests compare with)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = split_point(len(leaves))
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


class Frontier:
    """The roots of the perfect subtrees covering ``[0, size)``, largest first: O(log n) state that
    appends a leaf (returning the nodes it completes, in the storage order of :mod:`cyxwiz.audit.tree`)
    and gives the root at the current size."""

    __slots__ = ("hashes", "levels", "size")

    def __init__(self, *, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        self.size = size
        self.levels = [k for k in range(size.bit_length() - 1, -1, -1) if size >> k & 1]
        self.hashes = list(hashes)
        if len(self.hashes) != len(self.levels):
            raise ValueError("a frontier needs one hash per set bit of its size")

    def append(self, leaf: bytes) -> list[bytes]:
        """Add a leaf hash; return it and every parent it completes (bottom up)."""
        made = [leaf]
        levels, hashes = self.levels, self.hashes
        level, node = 0, leaf
        while levels and levels[-1] == level:
            levels.pop()
            node = node_hash(hashes.pop(), node)
            level += 1
            made.append(node)
        levels.append(level)
        hashes.append(node)
        self.size += 1
        return made

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for node in reversed(self.hashes[:-1]):
            root = node_hash(node, root)
        return root

    def copy(self) -> Frontier:
        return Frontier(size=self.size, hashes=self.hashes)


class NodeSource(Protocol):
    """Hashes of perfect subtrees: ``node(level, index)`` covers leaves [index·2^level, (index+1)·2^level)."""

    def node(self, level: int, index: int) -> bytes: ...


def subtree_root(source: NodeSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for ``start`` aligned the way the RFC's recursion produces it."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return source.node(level, start >> level)
    k = split_point(n)
    return node_hash(subtree_root(source, start, start + k), subtree_root(source, start + k, end))


def inclusion_proof(source: NodeSource, index: int, size: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[0:size]): the audit path, nearest sibling first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    # Walk down from the root, collecting the sibling at each split; reversed at the end (RFC order).
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            proof.append(subtree_root(source, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(source, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(source: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[0:new_size]) (SUBPROOF with b = true)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"cannot prove size {old_size} is a prefix of size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(subtree_root(source, start, end))
            break
        k = split_point(n)
        if m <= k:
            proof.append(subtree_root(source, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(source, start, start + k))
            start, m, complete = start + k, m - k, False
    proof.reverse()
    return proof


# --- offline verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------------------


def root_from_inclusion(*, leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that ``proof`` implies for ``leaf`` at ``index`` in a tree of ``size``; None if malformed."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE or sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(*, leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True iff ``leaf`` (a leaf *hash*) is leaf number ``index`` (0-based: seq - 1) of the tree of
    ``size`` leaves whose root is ``root``. Needs nothing but these values."""
    return root_from_inclusion(leaf=leaf, index=index, size=size, proof=proof) == root


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff the tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``): every
    record the old checkpoint covered is still there, unchanged and in the same place."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof or any(len(p) != HASH_SIZE for p in proof):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
