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

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.audit.chain_checks import Chain, RecordChecker
from cyxwiz.audit.digest_checks import check_digest_chain, compare_with_digest, load_digest
from cyxwiz.audit.prune import check_prune_marker
from cyxwiz.audit.reader import DayFiles, day_files, read_checkpoint, read_file_bytes
from cyxwiz.audit.records import GENESIS, HEAD_FILE, gz_name, log_name
from cyxwiz.audit.report import Kind, Problem, VerifyReport
from cyxwiz.audit.tree_checks import Signed, check_tree_and_checkpoints, collect_checkpoints, open_tree
from cyxwiz.errors import AuditError, NotFoundError

__all__ = ["Kind", "Problem", "VerifyReport", "verify_log"]


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
    verifier = RecordChecker(report)
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
        verifier.check_records(path.name, data, Chain(seq=None, prev=None))
        return report
    signed = collect_checkpoints(
        path, key=public_key, extra=checkpoints, origin=origin, problem=verifier.problem
    )
    signed += [Signed(source=source, size=size, root=root, own=False) for size, root, source in anchored]
    tree = open_tree(path)
    pruned = _verify_directory(path, verifier, public_key=public_key)
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


def _verify_directory(
    path: Path, verifier: RecordChecker, *, public_key: Ed25519PublicKey
) -> list[tuple[int, int, int]]:
    """Walk the days; return the pruned ranges as (index in leaves, first seq, last seq)."""
    # Read before the records: writers append a line, then move .head, so a snapshot taken first never
    # runs ahead of the lines read after it, and a live log verifies while it grows (issue 21 chaos).
    head = read_checkpoint(path)
    days = day_files(path)
    verifier.report.days = list(days)
    sealed = [d for d, f in days.items() if f.digest is not None]
    last_sealed = max(sealed) if sealed else None
    chain = Chain(seq=1, prev=GENESIS, file="", line=0)
    previous: tuple[date, bytes] | None = None
    pruned: list[tuple[int, int, int]] = []
    for day, files in days.items():
        loaded = load_digest(files, public_key=public_key, report=verifier.report)
        digest = loaded[0] if loaded else None
        if loaded is not None:
            check_digest_chain(files, loaded[0], previous, days, report=verifier.report)
        elif files.digest is None and last_sealed is not None and day < last_sealed and files.data:
            verifier.problem(
                Kind.DIGEST_MISSING, f"audit-{day}.digest.json", None, "a later day is sealed, not this"
            )
        if files.data is None and loaded is not None and files.pruned is not None:
            why = check_prune_marker(files.pruned, day=day, digest=loaded[1], trusted=public_key)
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
    _check_head(verifier, head, chain)
    return pruned


def _check_head(verifier: RecordChecker, checkpoint: tuple[date, int, str] | None, chain: Chain) -> None:
    """The writers' unauthenticated ``.head``: never an excuse, but extra evidence when it says more."""
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
    verifier: RecordChecker, files: DayFiles, digest: dict[str, Any] | None, chain: Chain
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
        compare_with_digest(data_path.name, data, digest, report=verifier.report)
