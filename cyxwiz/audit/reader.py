"""Reading the audit log back: day files (plain or gzipped), records, filtered events.

Readers never raise on bad content: a line that is not a record is skipped here (``verify`` is the place
that reports it). I/O and decompression failures of a whole file raise :class:`AuditError` naming it.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cyxwiz.audit.checkpoint import claimed_size
from cyxwiz.audit.records import (
    GENESIS,
    HEAD_FILE,
    Record,
    RecordFormatError,
    classify,
    parse_line,
)
from cyxwiz.errors import AuditError, NotFoundError

#: A day file is decompressed into memory; refuse absurd sizes instead of exhausting it (gzip bombs).
MAX_DAY_BYTES = 4 * 1024 * 1024 * 1024


@dataclass
class DayFiles:
    day: date
    log: Path | None = None
    gz: Path | None = None
    digest: Path | None = None
    checkpoints: Path | None = None
    pruned: Path | None = None

    @property
    def data(self) -> Path | None:
        """The file holding the day's records; the plain file wins (it is removed only after gzip)."""
        return self.log or self.gz


def day_files(directory: Path) -> dict[date, DayFiles]:
    """All audit files in ``directory`` grouped by day (sorted by day)."""
    found: dict[date, DayFiles] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        raise NotFoundError("audit log directory does not exist", path=str(directory)) from None
    except OSError as exc:
        raise AuditError(f"cannot list: {exc.strerror}", path=str(directory)) from None
    for entry in entries:
        got = classify(entry.name)
        if got is None:
            continue
        day, kind = got
        files = found.setdefault(day, DayFiles(day))
        setattr(files, kind, Path(entry.path))
    return dict(sorted(found.items()))


def read_file_bytes(path: Path) -> bytes:
    """The (decompressed) content of a log file. Raises AuditError naming the file on any failure."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = fh.read(MAX_DAY_BYTES + 1)
            if len(data) > MAX_DAY_BYTES:
                raise AuditError("decompressed day file is too large", path=str(path))
            return data
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise AuditError(f"cannot read: {exc}", path=str(path)) from None


def split_lines(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(line number from 1, line without newline, terminated?) for every line of ``data``."""
    if not data:
        return
    lines = data.split(b"\n")
    last = len(lines) - 1
    for index, raw in enumerate(lines):
        if index == last:
            if raw:
                yield index + 1, raw, False
            return
        yield index + 1, raw, True


def read_day_lines(directory: Path, day: date) -> Iterator[tuple[int, bytes]]:
    files = day_files(directory).get(day)
    if files is None or files.data is None:
        return
    for lineno, raw, _ in split_lines(read_file_bytes(files.data)):
        yield lineno, raw


@dataclass(frozen=True)
class StoredEvent:
    """A record as read back: where it is, its chain position, and the event as a JSON object."""

    file: str
    line: int
    seq: int
    event: dict[str, Any]

    @property
    def timestamp(self) -> datetime | None:
        value = self.event.get("timestamp")
        if not isinstance(value, str):
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None


def iter_records(path: Path, *, errors: list[str] | None = None) -> Iterator[tuple[str, int, Record]]:
    """Every parseable record in a log directory (day order) or a single day file.

    An unreadable file raises :class:`AuditError`, or, when ``errors`` is given, is noted there and
    skipped (a query should still show the other days).
    """
    if path.is_dir():
        sources = [f.data for f in day_files(path).values() if f.data is not None]
    elif path.exists():
        sources = [path]
    else:
        raise NotFoundError("no such audit log file or directory", path=str(path))
    for source in sources:
        try:
            data = read_file_bytes(source)
        except AuditError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
            continue
        for lineno, raw, _ in split_lines(data):
            try:
                yield source.name, lineno, parse_line(raw)
            except RecordFormatError:
                continue


def iter_raw_records(directory: Path) -> Iterator[tuple[int, bytes]]:
    """(seq, exact line bytes) of every parseable record, in file order over the days still present."""
    for files in day_files(directory).values():
        if files.data is None:
            continue
        for _, raw, terminated in split_lines(read_file_bytes(files.data)):
            if not terminated:
                continue
            try:
                yield parse_line(raw).seq, raw
            except RecordFormatError:
                continue


def signed_size_hint(checkpoint_file: bytes) -> int:
    """The tree size the ``checkpoint`` file at that path claims, unverified (writers' tamper alert only);
    0 when it claims none."""
    try:
        # raw system calls: a writer taking the log over from another process reads this every time
        fd = os.open(checkpoint_file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            note = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return 0
    return max(claimed_size(note), 0)


def iter_events(path: Path, *, errors: list[str] | None = None) -> Iterator[StoredEvent]:
    for name, lineno, rec in iter_records(path, errors=errors):
        yield StoredEvent(file=name, line=lineno, seq=rec.seq, event=rec.event)


def read_checkpoint(directory: Path) -> tuple[date, int, str] | None:
    """(day, seq, hash) of the last record any writer appended, from ``.head``; None if unknown."""
    try:
        parts = (directory / HEAD_FILE).read_bytes()[:200].split()
        if len(parts) < 3:
            return None
        return date.fromisoformat(parts[0].decode("ascii")), int(parts[1]), parts[2].decode("ascii")
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def chain_head_before(directory: Path, day: date) -> tuple[int, str]:
    """(seq, hash) of the last record written before ``day``: from the latest earlier digest or file."""
    days: dict[date, set[str]] = {}
    for entry in os.scandir(directory):
        found = classify(entry.name)
        if found is not None and found[0] < day:
            days.setdefault(found[0], set()).add(found[1])
    for earlier in sorted(days, reverse=True):
        kinds = days[earlier]
        if "digest" in kinds:
            try:
                digest = json.loads((directory / f"audit-{earlier.isoformat()}.digest.json").read_bytes())
                return int(digest["last_seq"]), str(digest["last_hash"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # fall back to the records themselves
        for _, raw in reversed(list(read_day_lines(directory, earlier))):
            try:
                rec = parse_line(raw)
            except RecordFormatError:
                continue
            return rec.seq, rec.hash
    return 0, GENESIS
