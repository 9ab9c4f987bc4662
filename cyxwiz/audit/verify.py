"""``verify``: walk the chain and name the first broken link (SPEC H4).

Finds, with file and line: an edited record (content no longer matches its hash), a record rewritten
with a recomputed hash (the next record no longer links to it), deleted records (sequence gap), reordered
records, inserted or replayed records (a sequence number twice), malformed and torn lines; and per day:
a missing, altered, truncated or forged day through the signed digests and their chain.

Never raises on bad content: every oddity becomes a :class:`Problem` in the :class:`VerifyReport`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.audit.digest import check_signature
from cyxwiz.audit.reader import DayFiles, day_files, read_checkpoint, read_file_bytes, split_lines
from cyxwiz.audit.records import GENESIS, HEAD_FILE, Record, RecordFormatError, gz_name, log_name, parse_line
from cyxwiz.errors import AuditError, NotFoundError

MAX_PROBLEMS = 100


class Kind(StrEnum):
    EDITED = "edited"
    REWRITTEN = "rewritten"
    DELETED = "deleted"
    REORDERED = "reordered"
    INSERTED = "inserted"
    MALFORMED = "malformed"
    TORN = "torn"
    TRUNCATED = "truncated"
    DAY_MISSING = "day-missing"
    DAY_ALTERED = "day-altered"
    DIGEST_MISSING = "digest-missing"
    DIGEST_INVALID = "digest-invalid"
    DIGEST_CHAIN = "digest-chain"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Problem:
    kind: Kind
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.kind.value}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "file": self.file, "line": self.line, "message": self.message}


@dataclass
class VerifyReport:
    path: str
    files: int = 0
    records: int = 0
    days: list[date] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "files": self.files,
            "records": self.records,
            "days": [d.isoformat() for d in self.days],
            "problems": [p.to_dict() for p in self.problems],
            "warnings": self.warnings,
        }


@dataclass
class _FileScan:
    name: str
    later: dict[int, int] = field(default_factory=dict)  # seq -> first line holding it
    linked: set[str] = field(default_factory=set)  # every prev hash some record points at
    seen: dict[int, tuple[int, Record]] = field(default_factory=dict)


@dataclass
class _Chain:
    seq: int | None  # next expected seq; None = unknown (a lone file)
    prev: str | None
    file: str = ""
    line: int = 0  # where the last accepted record is


class _Verifier:
    def __init__(
        self, report: VerifyReport, *, public_key: Ed25519PublicKey | None, require_signed: bool
    ) -> None:
        self.report = report
        self.public_key = public_key
        self.require_signed = require_signed or public_key is not None
        self.warned_unpinned = False

    def problem(self, kind: Kind, file: str, line: int | None, message: str) -> None:
        if len(self.report.problems) < MAX_PROBLEMS:
            self.report.problems.append(Problem(kind, file, line, message))

    # --- one file of records --------------------------------------------------------------------

    def check_records(self, name: str, data: bytes, chain: _Chain) -> None:
        scan = _FileScan(name=name)
        entries: list[tuple[int, Record | str]] = []
        for lineno, raw, terminated in split_lines(data):
            if not terminated:
                entries.append((lineno, "incomplete last line (torn write or truncated file)"))
                continue
            try:
                rec = parse_line(raw)
            except RecordFormatError as exc:
                entries.append((lineno, f"not an audit record ({exc})"))
                continue
            entries.append((lineno, rec))
            scan.later.setdefault(rec.seq, lineno)
            scan.linked.add(rec.prev)
        for lineno, entry in entries:
            if isinstance(entry, str):
                kind = Kind.TORN if entry.startswith("incomplete") else Kind.MALFORMED
                self.problem(kind, name, lineno, entry)
                continue
            self.report.records += 1
            accept = self._check_one(scan, lineno, entry, chain)
            scan.seen.setdefault(entry.seq, (lineno, entry))
            if accept:
                chain.seq, chain.prev, chain.file, chain.line = entry.seq + 1, entry.hash, name, lineno

    def _check_one(self, scan: _FileScan, lineno: int, rec: Record, chain: _Chain) -> bool:
        """Report what is wrong with ``rec`` at this place; False if the chain must skip it."""
        if not rec.hash_ok:
            self.problem(
                Kind.EDITED, scan.name, lineno, f"record seq {rec.seq} does not match its hash (edited)"
            )
        elif chain.seq is None or chain.prev is None:
            pass  # a lone file: its first record starts the chain
        elif rec.seq == chain.seq:
            self._check_link(scan, lineno, rec, chain)
        elif rec.seq > chain.seq:
            self._check_gap(scan, lineno, rec, chain)
        elif rec.seq in scan.seen:
            return self._check_duplicate(scan, lineno, rec)
        else:
            self.problem(
                Kind.REORDERED,
                scan.name,
                lineno,
                f"seq {rec.seq} comes after seq {chain.seq - 1}: records reordered",
            )
        return True

    def _check_link(self, scan: _FileScan, lineno: int, rec: Record, chain: _Chain) -> None:
        if rec.prev == chain.prev:
            return
        if chain.file == scan.name:
            # The record before links-in fine but is not what this one points at: it was rewritten and
            # its hash recomputed (the usual attack), so that earlier line is the place to name.
            self.problem(
                Kind.REWRITTEN,
                scan.name,
                chain.line,
                f"record rewritten, hash recomputed: line {lineno} (seq {rec.seq}) links to another record",
            )
        else:
            self.problem(
                Kind.REWRITTEN,
                scan.name,
                lineno,
                f"first record does not link to the last record of {chain.file or 'the previous day'} "
                "(that record rewritten, or this one forged)",
            )

    def _check_gap(self, scan: _FileScan, lineno: int, rec: Record, chain: _Chain) -> None:
        assert chain.seq is not None
        at = scan.later.get(chain.seq)
        if at is not None and at > lineno:
            self.problem(
                Kind.REORDERED,
                scan.name,
                lineno,
                f"seq {rec.seq} where seq {chain.seq} was expected (that is at line {at}): records reordered",
            )
            return
        missing = f"seq {chain.seq}" if rec.seq - chain.seq == 1 else f"seqs {chain.seq}–{rec.seq - 1}"
        if not chain.file:
            after = "the start of the log"
        elif chain.file == scan.name:
            after = f"line {chain.line}"
        else:
            after = f"the end of {chain.file}"
        self.problem(
            Kind.DELETED,
            scan.name,
            lineno,
            f"{missing} missing between {after} and this line: records deleted",
        )

    def _check_duplicate(self, scan: _FileScan, lineno: int, rec: Record) -> bool:
        first_line, first = scan.seen[rec.seq]
        if first.hash == rec.hash:
            self.problem(
                Kind.INSERTED, scan.name, lineno, f"copy of line {first_line} (seq {rec.seq}): replayed"
            )
            return False
        if rec.hash in scan.linked and first.hash not in scan.linked:
            # The chain continues from this one, so the earlier claimant of the seq is the forgery.
            self.problem(
                Kind.INSERTED,
                scan.name,
                first_line,
                f"forged record: line {lineno} also claims seq {rec.seq} and the chain continues from it",
            )
            return True
        self.problem(
            Kind.INSERTED, scan.name, lineno, f"inserted record: seq {rec.seq} already at line {first_line}"
        )
        return False

    # --- days and digests ---------------------------------------------------------------------------

    def load_digest(self, files: DayFiles) -> tuple[dict[str, Any], bytes] | None:
        if files.digest is None:
            return None
        name = files.digest.name
        try:
            raw = files.digest.read_bytes()
            digest = json.loads(raw)
            if not isinstance(digest, dict):
                raise ValueError("not an object")
            for key in ("day", "file_sha256", "lines"):
                if key not in digest:
                    raise ValueError(f"missing {key}")
        except (OSError, ValueError) as exc:
            self.problem(Kind.DIGEST_INVALID, name, None, f"unreadable digest ({exc})")
            return None
        if digest.get("day") != files.day.isoformat():
            self.problem(Kind.DIGEST_INVALID, name, None, f"digest is for day {digest.get('day')}")
        why = check_signature(digest, trusted=self.public_key)
        if why is None and self.public_key is None and not self.warned_unpinned:
            self.warned_unpinned = True
            self.report.warnings.append("digests verified with the key inside them; pin it with --public-key")
        if why == "digest is not signed" and not self.require_signed:
            self.report.warnings.append(f"{name}: digest is not signed")
        elif why is not None:
            self.problem(Kind.DIGEST_INVALID, name, None, why)
        return digest, raw

    def check_digest_chain(
        self,
        files: DayFiles,
        digest: dict[str, Any],
        previous: tuple[date, bytes] | None,
        all_days: dict[date, DayFiles],
    ) -> None:
        name = files.digest.name if files.digest else ""
        named = digest.get("previous_day")
        prev_day = previous[0].isoformat() if previous else None
        if named == prev_day:
            if (
                previous is not None
                and digest.get("previous_digest_sha256") != hashlib.sha256(previous[1]).hexdigest()
            ):
                self.problem(
                    Kind.DIGEST_CHAIN, f"audit-{prev_day}.digest.json", None, "digest altered or replaced"
                )
            return
        if isinstance(named, str):
            try:
                missing = date.fromisoformat(named)
            except ValueError:
                self.problem(Kind.DIGEST_INVALID, name, None, "previous_day is not a date")
                return
            if missing not in all_days:
                self.problem(
                    Kind.DAY_MISSING,
                    gz_name(missing),
                    None,
                    f"day {named} is missing (log and digest deleted); the digest of {files.day} names it",
                )
                return
            if all_days[missing].digest is None:
                return  # reported as a missing digest already
        self.problem(
            Kind.DIGEST_CHAIN,
            name,
            None,
            f"digest names previous day {named} but the log has {prev_day} before it (a day inserted?)",
        )

    def compare_with_digest(self, name: str, data: bytes, digest: dict[str, Any]) -> None:
        if hashlib.sha256(data).hexdigest() == digest.get("file_sha256"):
            return
        lines = sum(1 for _ in split_lines(data))
        expected = digest.get("lines")
        if isinstance(expected, int) and lines < expected:
            self.problem(
                Kind.TRUNCATED,
                name,
                lines + 1,
                f"file ends after line {lines} but its signed digest lists {expected} lines: records deleted",
            )
        else:
            self.problem(Kind.DAY_ALTERED, name, None, "content differs from the signed digest of the day")


def verify_log(
    path: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    require_signed: bool = False,
    retention_days: int = 7,
) -> VerifyReport:
    """Verify a log directory (all days, digests and their chain) or a single day file (its chain)."""
    path = Path(path)
    report = VerifyReport(path=str(path))
    verifier = _Verifier(report, public_key=public_key, require_signed=require_signed)
    if not path.exists():
        raise NotFoundError("no such audit log file or directory", path=str(path))
    if not path.is_dir():
        report.files = 1
        report.warnings.append("single file: only its internal chain is checked (no digests, no neighbours)")
        try:
            data = read_file_bytes(path)
        except AuditError as exc:
            verifier.problem(Kind.UNREADABLE, path.name, None, exc.message)
            return report
        verifier.check_records(path.name, data, _Chain(seq=None, prev=None))
        return report
    _verify_directory(path, verifier, retention_days)
    return report


def _verify_directory(path: Path, verifier: _Verifier, retention_days: int) -> None:
    report = verifier.report
    days = day_files(path)
    report.days = list(days)
    sealed = [d for d, f in days.items() if f.digest is not None]
    last_sealed = max(sealed) if sealed else None
    # Retention counts from the chain's day (maintenance advances it even on days without events).
    checkpoint = read_checkpoint(path)
    newest = max([*days, *([checkpoint[0]] if checkpoint else [])], default=None)
    chain = _Chain(seq=1, prev=GENESIS, file="", line=0)
    previous: tuple[date, bytes] | None = None
    for day, files in days.items():
        loaded = verifier.load_digest(files)
        digest = loaded[0] if loaded else None
        if loaded is not None:
            verifier.check_digest_chain(files, loaded[0], previous, days)
        elif files.digest is None and last_sealed is not None and day < last_sealed:
            verifier.problem(
                Kind.DIGEST_MISSING, f"audit-{day}.digest.json", None, "a later day is sealed, not this"
            )
        pruned = newest is not None and day < newest - timedelta(days=retention_days)
        _check_day_data(verifier, files, digest, chain, pruned=pruned)
        if digest is not None:
            # The signed digest is authoritative for where the day ended: resynchronise on it, so a
            # damaged day is reported once and not again at the next day's first line.
            last_seq, last_hash = digest.get("last_seq"), digest.get("last_hash")
            if isinstance(last_seq, int) and isinstance(last_hash, str):
                chain.seq, chain.prev, chain.file, chain.line = last_seq + 1, last_hash, log_name(day), 0
        if loaded is not None:
            previous = (day, loaded[1])
    _check_checkpoint(verifier, path, chain)


def _check_checkpoint(verifier: _Verifier, path: Path, chain: _Chain) -> None:
    """Records cut off the end of the open day leave a valid chain; the writers' checkpoint says more."""
    checkpoint = read_checkpoint(path)
    if checkpoint is None or chain.seq is None:
        return
    _, seq, digest = checkpoint
    last = chain.seq - 1
    if seq > last or (seq == last and digest != chain.prev):
        verifier.problem(
            Kind.TRUNCATED,
            chain.file or HEAD_FILE,
            chain.line + 1 if chain.file else None,
            f"log ends at seq {last} but the writers' checkpoint ({HEAD_FILE}) says seq {seq} was written: "
            "records deleted at the end",
        )


def _check_day_data(
    verifier: _Verifier, files: DayFiles, digest: dict[str, Any] | None, chain: _Chain, *, pruned: bool
) -> None:
    data_path = files.data
    if data_path is None:
        if digest is not None and pruned:
            verifier.report.warnings.append(f"{files.day}: pruned locally after archiving; chain continues")
        elif digest is not None:
            verifier.problem(
                Kind.DAY_MISSING, gz_name(files.day), None, "log file deleted (its signed digest remains)"
            )
        return
    verifier.report.files += 1
    try:
        data = read_file_bytes(data_path)
    except AuditError as exc:
        verifier.problem(Kind.UNREADABLE, data_path.name, None, exc.message)
        return
    verifier.check_records(data_path.name, data, chain)
    if digest is not None:
        verifier.compare_with_digest(data_path.name, data, digest)
