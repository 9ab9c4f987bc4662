"""Closing days: seal (signed digest), gzip, archive, prune (SPEC H3, H4).

Runs under its own ``flock`` (``.maintain.lock``) so two processes never close the same day twice, and
only touches days before the chain's head day, which no writer appends to any more. Each step is
idempotent and ordered so a crash at any point leaves a state the next run completes:
digest written → gzip written → plain file removed → archived → (after retention, if archived) pruned.
Retention deletes the local copy of a day only when the archive holds both its log and its digest, and
only after writing a signed prune marker (``audit-DAY.pruned.json``): ``verify`` accepts a missing day
only with that marker, never because of its age or of anything unsigned. Digests and markers stay local
(they are tiny and keep the chain checkable after pruning); the Merkle tree keeps every leaf.
"""

from __future__ import annotations

import fcntl
import gzip
import os
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cyxwiz.audit.archive import archive_key
from cyxwiz.audit.digest import build_digest, write_atomic
from cyxwiz.audit.prune import write_prune_marker
from cyxwiz.audit.reader import day_files, read_file_bytes
from cyxwiz.audit.records import digest_name, gz_name, log_name
from cyxwiz.audit.tree import TREE_FILE, MappedTree
from cyxwiz.shared_dir import file_mode

if TYPE_CHECKING:
    from cyxwiz.audit.log import AuditLog

MAINTAIN_LOCK = ".maintain.lock"


@dataclass
class MaintenanceReport:
    head: date
    sealed: list[date] = field(default_factory=list)
    compressed: list[date] = field(default_factory=list)
    archived: list[date] = field(default_factory=list)
    pruned: list[date] = field(default_factory=list)


def run_maintenance(log: AuditLog) -> MaintenanceReport:
    directory = log.directory
    lock_fd = os.open(directory / MAINTAIN_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode(directory))
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        now = log.clock()
        head = log.advance_head(now)
        report = MaintenanceReport(head=head)
        keep_from = head - timedelta(days=log.retention_days)
        previous: tuple[date, bytes] | None = None
        for day, files in day_files(directory).items():
            if day >= head:
                break
            if files.digest is None:
                if files.data is None:
                    continue
                data = read_file_bytes(files.data)
                files.digest = directory / digest_name(day)
                root = _root_at(directory, _last_seq(data))
                write_atomic(
                    files.digest,
                    build_digest(
                        day=day,
                        file_name=log_name(day),
                        data=data,
                        previous=previous,
                        signing_key=log.signing_key,
                        created_at=now,
                        root=root,
                    ),
                )
                report.sealed.append(day)
            digest_bytes = files.digest.read_bytes()
            if files.log is not None:
                # mtime=0 and no name: the same day always gzips to the same bytes (stable archive hash).
                packed = gzip.compress(files.log.read_bytes(), compresslevel=6, mtime=0)
                files.gz = directory / gz_name(day)
                write_atomic(files.gz, packed)
                files.log.unlink()
                files.log = None
                report.compressed.append(day)
            archive = log.archive
            if archive is not None and files.gz is not None:
                uploaded = False
                for name, path in ((gz_name(day), files.gz), (digest_name(day), files.digest)):
                    key = archive_key(day, name)
                    if not archive.exists(key):
                        archive.put_file(key, path)
                        uploaded = True
                if uploaded:
                    report.archived.append(day)
                if (
                    day < keep_from
                    and archive.exists(archive_key(day, gz_name(day)))
                    and archive.exists(archive_key(day, digest_name(day)))
                ):
                    write_prune_marker(
                        directory,
                        day=day,
                        gz=files.gz,
                        digest=digest_bytes,
                        archive_keys=[archive_key(day, gz_name(day)), archive_key(day, digest_name(day))],
                        key=log.signing_key,
                        at=now,
                    )
                    files.gz.unlink()
                    report.pruned.append(day)
            previous = (day, digest_bytes)
        return report
    finally:
        os.close(lock_fd)


def _last_seq(data: bytes) -> int | None:
    from cyxwiz.audit.reader import split_lines
    from cyxwiz.audit.records import RecordFormatError, parse_line

    for _, raw, _ in reversed(list(split_lines(data))):
        try:
            return parse_line(raw).seq
        except RecordFormatError:
            continue
    return None


def _root_at(directory: Path, size: int | None) -> bytes | None:
    """The stored tree's root when it held ``size`` records (None when the tree does not reach it)."""
    if not size:
        return None
    try:
        with MappedTree(directory / TREE_FILE) as tree:
            if tree.size < size:
                return None
            return _frontier_root(tree, size)
    except OSError:
        return None


def _frontier_root(tree: MappedTree, size: int) -> bytes:
    from cyxwiz.audit.merkle import subtree_root

    return subtree_root(tree, 0, size)
