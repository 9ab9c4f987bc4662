"""Checks of the signed daily digests (SPEC H4): each digest's signature by the pinned key, the chain of
digests from day to day (a day deleted or inserted), and each day file against its digest (altered or
truncated). Part of :func:`cyxwiz.audit.verify.verify_log`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.audit.digest import check_signature
from cyxwiz.audit.reader import DayFiles, split_lines
from cyxwiz.audit.records import gz_name
from cyxwiz.audit.report import Kind, VerifyReport


def load_digest(
    files: DayFiles, *, public_key: Ed25519PublicKey, report: VerifyReport
) -> tuple[dict[str, Any], bytes] | None:
    """The digest and its bytes if it parses and its signature holds; None (reported) otherwise."""
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
        report.add(Kind.DIGEST_INVALID, name, None, f"unreadable digest ({exc})")
        return None
    if digest.get("day") != files.day.isoformat():
        report.add(Kind.DIGEST_INVALID, name, None, f"digest is for day {digest.get('day')}")
    why = check_signature(digest, trusted=public_key)
    if why is not None:
        report.add(Kind.DIGEST_INVALID, name, None, why)
        return None
    return digest, raw


def check_digest_chain(
    files: DayFiles,
    digest: dict[str, Any],
    previous: tuple[date, bytes] | None,
    all_days: dict[date, DayFiles],
    *,
    report: VerifyReport,
) -> None:
    """Does this digest name the day before it, and that day's digest as it is?"""
    name = files.digest.name if files.digest else ""
    named = digest.get("previous_day")
    prev_day = previous[0].isoformat() if previous else None
    if named == prev_day:
        if (
            previous is not None
            and digest.get("previous_digest_sha256") != hashlib.sha256(previous[1]).hexdigest()
        ):
            report.add(Kind.DIGEST_CHAIN, f"audit-{prev_day}.digest.json", None, "digest altered or replaced")
        return
    if isinstance(named, str):
        try:
            missing = date.fromisoformat(named)
        except ValueError:
            report.add(Kind.DIGEST_INVALID, name, None, "previous_day is not a date")
            return
        gone = all_days.get(missing)
        if gone is None or (gone.data is None and gone.digest is None):
            report.add(
                Kind.DAY_MISSING,
                gz_name(missing),
                None,
                f"day {named} is missing (log and digest deleted); the digest of {files.day} names it",
            )
            return
        if all_days[missing].digest is None:
            return  # reported as a missing digest already
    report.add(
        Kind.DIGEST_CHAIN,
        name,
        None,
        f"digest names previous day {named} but the log has {prev_day} before it (a day inserted?)",
    )


def compare_with_digest(name: str, data: bytes, digest: dict[str, Any], *, report: VerifyReport) -> None:
    """Is the day file the one its signed digest hashed (and if not, was it cut short)?"""
    if hashlib.sha256(data).hexdigest() == digest.get("file_sha256"):
        return
    lines = sum(1 for _ in split_lines(data))
    expected = digest.get("lines")
    if isinstance(expected, int) and lines < expected:
        report.add(
            Kind.TRUNCATED,
            name,
            lines + 1,
            f"file ends after line {lines} but its signed digest lists {expected} lines: records deleted",
        )
    else:
        report.add(Kind.DAY_ALTERED, name, None, "content differs from the signed digest of the day")
