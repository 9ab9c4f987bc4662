"""``verify``: walk the chain and name the first broken link (SPEC H4).

Finds, with file and line: an edited record (content no longer matches its hash), a record rewritten
with a recomputed hash (the next record no longer links to it), deleted records (sequence gap), reordered
records, inserted or replayed records (a sequence number twice), malformed and torn lines; and per day:
a missing, altered, truncated or forged day through the signed digests and their chain; and for the
whole log: every leaf of the Merkle tree recomputed from the records and compared with every signed
checkpoint (the latest, the history, the digests, and any a party kept), so records cut off the end,
whole days deleted, reordered or edited records and foreign signatures all fail. Only the pinned public
key is trusted; nothing unsigned (``.head``, a file's age) ever excuses a missing record.

Never raises on bad content: every oddity becomes a :class:`Problem` in the :class:`VerifyReport`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.audit.digest import check_signature
from cyxwiz.audit.prune import check_prune_marker
from cyxwiz.audit.reader import DayFiles, day_files, read_checkpoint, read_file_bytes, split_lines
from cyxwiz.audit.records import (
    GENESIS,
    HEAD_FILE,
    Record,
    RecordFormatError,
    gz_name,
    leaf_of,
    log_name,
    parse_line,
)
from cyxwiz.audit.report import MAX_PROBLEMS, Kind, Problem, VerifyReport
from cyxwiz.audit.tree_checks import Signed, check_tree_and_checkpoints, collect_checkpoints, open_tree
from cyxwiz.errors import AuditError, NotFoundError

__all__ = ["Kind", "Problem", "VerifyReport", "verify_log"]
TAMPER_ACTION = "audit.tamper_detected"


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
    def __init__(self, report: VerifyReport, *, public_key: Ed25519PublicKey) -> None:
        self.report = report
        self.public_key = public_key
        #: Leaf hashes of every record in file order (stored leaves stand in for pruned days).
        self.leaves: list[bytes] = []

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
        if why is not None:
            self.problem(Kind.DIGEST_INVALID, name, None, why)
            return None
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
            gone = all_days.get(missing)
            if gone is None or (gone.data is None and gone.digest is None):
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
    public_key: Ed25519PublicKey,
    checkpoints: Sequence[bytes] = (),
    origin: str | None = None,
    anchored: Sequence[tuple[int, bytes, str]] = (),
) -> VerifyReport:
    """Verify a log directory (all days, digests, the Merkle tree and every signed checkpoint) or a
    single day file (its chain only), trusting ``public_key`` alone. ``checkpoints`` are signed notes a
    party kept (``--checkpoint FILE``); ``origin`` pins the log's name in them; ``anchored`` are (size,
    root, source) read from on-chain anchors already checked (:func:`cyxwiz.audit.anchor.check_anchors`)."""
    if not isinstance(public_key, Ed25519PublicKey):
        raise AuditError("verify needs the pinned Ed25519 public key of the audit log", field="public_key")
    path = Path(path)
    report = VerifyReport(path=str(path))
    verifier = _Verifier(report, public_key=public_key)
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
    signed = collect_checkpoints(
        path, key=public_key, extra=checkpoints, origin=origin, problem=verifier.problem
    )
    signed += [Signed(source=source, size=size, root=root, own=False) for size, root, source in anchored]
    tree = open_tree(path)
    pruned = _verify_directory(path, verifier)
    check_tree_and_checkpoints(
        path,
        report=report,
        leaves=verifier.leaves,
        pruned=pruned,
        signed=signed,
        tree=tree,
        problem=verifier.problem,
    )
    return report


def _verify_directory(path: Path, verifier: _Verifier) -> list[tuple[int, int, int]]:
    """Walk the days; return the pruned ranges as (index in leaves, first seq, last seq)."""
    days = day_files(path)
    verifier.report.days = list(days)
    sealed = [d for d, f in days.items() if f.digest is not None]
    last_sealed = max(sealed) if sealed else None
    chain = _Chain(seq=1, prev=GENESIS, file="", line=0)
    previous: tuple[date, bytes] | None = None
    pruned: list[tuple[int, int, int]] = []
    for day, files in days.items():
        loaded = verifier.load_digest(files)
        digest = loaded[0] if loaded else None
        if loaded is not None:
            verifier.check_digest_chain(files, loaded[0], previous, days)
        elif files.digest is None and last_sealed is not None and day < last_sealed and files.data:
            verifier.problem(
                Kind.DIGEST_MISSING, f"audit-{day}.digest.json", None, "a later day is sealed, not this"
            )
        if files.data is None and loaded is not None and files.pruned is not None:
            why = check_prune_marker(files.pruned, day=day, digest=loaded[1], trusted=verifier.public_key)
            if why is not None:
                verifier.problem(Kind.DAY_MISSING, gz_name(day), None, f"log file deleted; {why}")
            else:
                first, last = loaded[0].get("first_seq"), loaded[0].get("last_seq")
                if isinstance(first, int) and isinstance(last, int):
                    pruned.append((len(verifier.leaves), first, last))
                verifier.report.warnings.append(f"{day}: pruned locally after archiving (signed marker)")
        else:
            _check_day_data(verifier, files, digest, chain)
        if digest is not None:
            # The signed digest is authoritative for where the day ended: resynchronise on it, so a
            # damaged day is reported once and not again at the next day's first line.
            last_seq, last_hash = digest.get("last_seq"), digest.get("last_hash")
            if isinstance(last_seq, int) and isinstance(last_hash, str):
                chain.seq, chain.prev, chain.file, chain.line = last_seq + 1, last_hash, log_name(day), 0
        if loaded is not None:
            previous = (day, loaded[1])
    _check_head(verifier, path, chain)
    return pruned


def _check_head(verifier: _Verifier, path: Path, chain: _Chain) -> None:
    """The writers' unauthenticated ``.head``: never an excuse, but extra evidence when it says more."""
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
    verifier: _Verifier, files: DayFiles, digest: dict[str, Any] | None, chain: _Chain
) -> None:
    data_path = files.data
    if data_path is None:
        if digest is not None:
            verifier.problem(
                Kind.DAY_MISSING,
                gz_name(files.day),
                None,
                "log file deleted (its signed digest remains; no signed prune marker says it was archived)",
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
