"""Checks of the records themselves (SPEC H4): each line's hash, its link to the one before, and the
sequence numbers, so an edited, rewritten, deleted, reordered, inserted, replayed, malformed or torn
record is named by file and line. Part of :func:`cyxwiz.audit.verify.verify_log`.

Order of the checks for one record (the first that applies is reported): its own hash; then, against
the chain so far, the expected seq (does it link to the record before?), a seq ahead (a gap: deleted,
unless the expected seq comes further down: reordered), a seq seen before in this file (replayed or
inserted), an older seq (reordered).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cyxwiz.audit.reader import split_lines
from cyxwiz.audit.records import Record, RecordFormatError, leaf_of, parse_line
from cyxwiz.audit.report import Kind, VerifyReport

TAMPER_ACTION = "audit.tamper_detected"


@dataclass
class _FileScan:
    name: str
    later: dict[int, int] = field(default_factory=dict)  # seq -> first line holding it
    linked: set[str] = field(default_factory=set)  # every prev hash some record points at
    seen: dict[int, tuple[int, Record]] = field(default_factory=dict)


@dataclass
class Chain:
    seq: int | None  # next expected seq; None = unknown (a lone file)
    prev: str | None
    file: str = ""
    line: int = 0  # where the last accepted record is


class RecordChecker:
    """Walks the records of the day files in order, carrying the chain from one file to the next."""

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.problem = report.add
        #: Leaf hashes of every record in file order (stored leaves stand in for pruned days).
        self.leaves: list[bytes] = []

    def check_records(self, name: str, data: bytes, chain: Chain) -> None:
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
            self.leaves.append(leaf_of(raw))
            scan.later.setdefault(rec.seq, lineno)
            scan.linked.add(rec.prev)
        for lineno, entry in entries:
            if isinstance(entry, str):
                kind = Kind.TORN if entry.startswith("incomplete") else Kind.MALFORMED
                self.problem(kind, name, lineno, entry)
                continue
            self.report.records += 1
            if entry.event.get("action") == TAMPER_ACTION and entry.hash_ok:
                reason = entry.event.get("details", {}).get("reason", "")
                self.problem(
                    Kind.TAMPER_ALERT, name, lineno, f"a writer found the log tampered with: {reason}"
                )
            accept = self._check_one(scan, lineno, entry, chain)
            scan.seen.setdefault(entry.seq, (lineno, entry))
            if accept:
                chain.seq, chain.prev, chain.file, chain.line = entry.seq + 1, entry.hash, name, lineno

    def _check_one(self, scan: _FileScan, lineno: int, rec: Record, chain: Chain) -> bool:
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

    def _check_link(self, scan: _FileScan, lineno: int, rec: Record, chain: Chain) -> None:
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

    def _check_gap(self, scan: _FileScan, lineno: int, rec: Record, chain: Chain) -> None:
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
