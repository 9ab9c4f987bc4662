"""``verify``'s whole-log checks: the recomputed Merkle tree against every signed checkpoint (SPEC H4).

The leaves come from the records themselves (stored leaves only stand in for days pruned under a signed
marker). Every checkpoint the log kept — ``checkpoint``, each day's history, each digest's day-end root —
and every one a party brings (``--checkpoint``) must verify with the pinned key and match the tree
recomputed at its size. A checkpoint larger than the log means records were cut off; a root that differs
means records were edited, reordered, inserted or replaced. A log with records and no signed checkpoint
at all is refused (its end cannot be authenticated).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.audit.checkpoint import verify_checkpoint
from cyxwiz.audit.digest import check_signature
from cyxwiz.audit.merkle import Frontier, subtree_root
from cyxwiz.audit.reader import day_files
from cyxwiz.audit.records import CHECKPOINT_FILE
from cyxwiz.audit.report import Kind, VerifyReport
from cyxwiz.audit.signer import read_latest_checkpoint
from cyxwiz.audit.tree import TREE_FILE, MappedTree
from cyxwiz.errors import AuditIntegrityError

Report = Callable[[Kind, str, int | None, str], None]


@dataclass(frozen=True)
class Signed:
    source: str  # file (and line) it came from
    size: int
    root: bytes
    own: bool  # kept by the log itself (not brought by a party)


def check_tree_and_checkpoints(
    directory: Path,
    *,
    report: VerifyReport,
    leaves: list[bytes],
    pruned: list[tuple[int, int, int]],
    signed: list[Signed],
    tree: MappedTree | None,
    problem: Report,
) -> None:
    """``signed`` were collected and ``tree`` mapped *before* the records were read, so a live log's
    writers can make neither look ahead of the records: either being ahead means records are gone."""
    try:
        if pruned:
            leaves = _fill_pruned(leaves, pruned, tree, problem)
        stored = tree.size if tree is not None else 0
        roots = _roots_at(leaves, {s.size for s in signed} | {len(leaves), min(stored, len(leaves))})
        latest: Signed | None = None
        beyond = [s for s in signed if s.size > len(leaves)]
        differ = [s for s in signed if s.size <= len(leaves) and roots[s.size] != s.root]
        report.checkpoints_checked = len(signed)
        if beyond:
            worst = max(beyond, key=lambda s: s.size)
            problem(
                Kind.TRUNCATED,
                worst.source,
                None,
                f"signed checkpoint covers {worst.size} records but the log holds {len(leaves)}: records "
                f"deleted (cut off the end, or a whole day removed){_others(beyond)}",
            )
        if differ:
            first = min(differ, key=lambda s: s.size)
            problem(
                Kind.CHECKPOINT_MISMATCH,
                first.source,
                None,
                f"the log's first {first.size} records do not hash to this signed checkpoint's root: "
                f"records edited, reordered, inserted or replaced{_others(differ)}",
            )
        for item in signed:
            if item.source == CHECKPOINT_FILE and item not in beyond and item not in differ:
                latest = item
        if leaves and not any(s.source == CHECKPOINT_FILE for s in signed):
            # Writers sign ``checkpoint`` at their first record and never remove it: its absence (or a
            # foreign signature, reported above) leaves the newest records unauthenticated.
            problem(
                Kind.CHECKPOINT_MISSING,
                CHECKPOINT_FILE,
                None,
                f"{len(leaves)} records but no valid latest checkpoint signed by the pinned key: "
                "the log's end is unauthenticated (checkpoint deleted or replaced)",
            )
        elif leaves and not any(s.own for s in signed):
            problem(
                Kind.CHECKPOINT_MISSING,
                CHECKPOINT_FILE,
                None,
                f"{len(leaves)} records but no checkpoint signed by the pinned key: "
                "the log's end is unauthenticated",
            )
        own_max = max((s.size for s in signed if s.own), default=0)
        if own_max and own_max < len(leaves):
            report.warnings.append(
                f"{len(leaves) - own_max} newest records are not yet covered by a signed checkpoint"
            )
        if latest is not None:
            report.checkpoint = {
                "size": latest.size,
                "root": base64.b64encode(latest.root).decode("ascii"),
            }
        if report.ok:  # a broken log's stored tree differs too; that is the same incident, not news
            own_max = max((s.size for s in signed if s.own), default=0)
            _compare_stored_tree(
                tree, leaves, roots=roots, signed_max=own_max, problem=problem, report=report
            )
    finally:
        if tree is not None:
            tree.close()


def _others(items: list[Signed]) -> str:
    return f" (and {len(items) - 1} more signed checkpoints)" if len(items) > 1 else ""


def open_tree(directory: Path) -> MappedTree | None:
    try:
        return MappedTree(directory / TREE_FILE)
    except FileNotFoundError:
        return None


def _fill_pruned(
    leaves: list[bytes], pruned: list[tuple[int, int, int]], tree: MappedTree | None, problem: Report
) -> list[bytes]:
    out: list[bytes] = []
    done = 0
    for at, first, last in pruned:
        out.extend(leaves[done:at])
        done = at
        if tree is None or tree.size < last:
            problem(Kind.TREE, TREE_FILE, None, f"pruned seqs {first}–{last} are not in the stored tree")
            continue
        out.extend(tree.leaf(i) for i in range(first - 1, last))
    out.extend(leaves[done:])
    return out


def collect_checkpoints(
    directory: Path,
    *,
    key: Ed25519PublicKey,
    extra: Sequence[bytes],
    origin: str | None,
    problem: Report,
) -> list[Signed]:
    found: list[Signed] = []
    origins: list[str] = []

    def add(note: bytes, source: str, *, own: bool) -> None:
        try:
            cp = verify_checkpoint(note, public_key=key, origin=origin)
        except AuditIntegrityError as exc:
            problem(Kind.CHECKPOINT_INVALID, source, None, exc.message)
            return
        found.append(Signed(source=source, size=cp.size, root=cp.root, own=own))
        origins.append(cp.origin)

    latest = read_latest_checkpoint(directory)
    if latest is not None:
        add(latest, CHECKPOINT_FILE, own=True)
    for files in day_files(directory).values():
        if files.checkpoints is not None:
            for lineno, raw in enumerate(files.checkpoints.read_bytes().splitlines(), start=1):
                try:
                    note = json.loads(raw)["note"].encode("utf-8")
                except (ValueError, KeyError, TypeError, AttributeError):
                    problem(Kind.CHECKPOINT_INVALID, files.checkpoints.name, lineno, "not a checkpoint entry")
                    continue
                add(note, f"{files.checkpoints.name}:{lineno}", own=True)
        if files.digest is not None:
            found.extend(_digest_root(files.digest, key))
    for index, note in enumerate(extra, start=1):
        add(note, f"--checkpoint #{index}", own=False)
    if len(set(origins)) > 1:
        problem(
            Kind.CHECKPOINT_INVALID,
            CHECKPOINT_FILE,
            None,
            f"checkpoints of several logs: {sorted(set(origins))}",
        )
    return found


def _digest_root(path: Path, key: Ed25519PublicKey) -> list[Signed]:
    """A sealed day's end as its signed digest states it (an invalid digest is reported elsewhere)."""
    try:
        digest = json.loads(path.read_bytes())
        size, root = digest.get("tree_size"), digest.get("root")
        if not isinstance(size, int) or not isinstance(root, str) or check_signature(digest, trusted=key):
            return []
        return [Signed(source=path.name, size=size, root=base64.b64decode(root, validate=True), own=True)]
    except (OSError, ValueError, AttributeError, binascii.Error):
        return []


def _roots_at(leaves: list[bytes], sizes: set[int]) -> dict[int, bytes]:
    """The tree root at each of ``sizes`` (those within the log), in one pass over the leaves."""
    wanted = sorted(s for s in sizes if s <= len(leaves))
    roots: dict[int, bytes] = {}
    frontier = Frontier()
    at = 0
    for size in wanted:
        frontier.extend(leaves[at:size])
        at = size
        roots[size] = frontier.root()
    return roots


def _compare_stored_tree(
    tree: MappedTree | None,
    leaves: list[bytes],
    *,
    roots: dict[int, bytes],
    signed_max: int,
    problem: Report,
    report: VerifyReport,
) -> None:
    """Proofs come from the stored tree: it must hold these leaves, at least up to the signed size
    (writers batch nodes, so a live log's tree may trail its newest records until the next checkpoint)."""
    n = len(leaves)
    stored = tree.size if tree is not None else 0
    m = min(stored, n)
    if m < signed_max:
        problem(
            Kind.TREE,
            TREE_FILE,
            None,
            f"the stored Merkle tree covers {stored} records but checkpoints were signed at {signed_max} "
            "(removed or damaged)",
        )
        return
    if tree is not None and m and subtree_root(tree, 0, m) != roots[m]:
        problem(Kind.TREE, TREE_FILE, None, "the stored Merkle tree differs from the records")
    elif stored > n + 1:
        problem(
            Kind.TRUNCATED,
            TREE_FILE,
            None,
            f"the stored Merkle tree holds {stored} records but the log only {n}: records deleted",
        )
    elif stored > n:
        report.warnings.append("the stored tree holds a leaf past the last record (a write that failed)")
    elif stored < n:
        report.warnings.append(
            f"the stored tree trails the log by {n - stored} records (until the next checkpoint)"
        )
