"""The on-disk record format of the audit log (SPEC H3, H4).

One JSON object per line::

    {"hash":"<sha256 hex>","seq":<int>,"prev":"<sha256 hex>","event":{...SecurityEvent...}}

``hash`` is the record's RFC 6962 Merkle *leaf hash*: ``SHA-256(0x00 || body)`` where the body — the
record's canonical bytes — is the record *without* the hash field, i.e. the exact bytes
``{"seq":...,"prev":...,"event":{...}}``, which are the line's bytes after the fixed-width hash prefix
with ``{`` put back. So a verifier checks the raw bytes that were written and never depends on how a JSON
library re-serialises them, and one hash per record serves both the chain and the Merkle tree. ``prev``
is the ``hash`` of the record before it (across day files, so deleting a whole day breaks the chain too);
``seq`` counts records from 1 over the log's whole life.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

GENESIS = "0" * 64
_PREFIX = b'{"hash":"'
_HASH_END = len(_PREFIX) + 64
#: ``{"hash":"<64 hex>",`` — everything after it, with "{" in front, is the hashed body.
BODY_OFFSET = _HASH_END + 2
_HEX = re.compile(rb"[0-9a-f]{64}")

#: Writers' lock file; it also holds the checkpoint "<day> <seq> <hash>" of the last record written.
HEAD_FILE = ".head"
LOG_SUFFIX = ".jsonl"
GZ_SUFFIX = ".jsonl.gz"
DIGEST_SUFFIX = ".digest.json"
#: Every signed checkpoint a writer kept in the history of that day (one JSON object per line).
CHECKPOINTS_SUFFIX = ".checkpoints.jsonl"
#: Signed statement that a day's records were archived and then removed locally (retention).
PRUNED_SUFFIX = ".pruned.json"
#: The latest signed checkpoint (a C2SP signed note), rewritten by the writers.
CHECKPOINT_FILE = "checkpoint"
_KINDS = {
    LOG_SUFFIX: "log",
    GZ_SUFFIX: "gz",
    DIGEST_SUFFIX: "digest",
    CHECKPOINTS_SUFFIX: "checkpoints",
    PRUNED_SUFFIX: "pruned",
}
_DAY_FILE = re.compile(
    r"^audit-(\d{4}-\d{2}-\d{2})(\.jsonl|\.jsonl\.gz|\.digest\.json|\.checkpoints\.jsonl|\.pruned\.json)$"
)


class RecordFormatError(ValueError):
    """A line is not a well-formed audit record (the reader turns it into a report entry)."""


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    prev: str
    hash: str
    hash_ok: bool
    event: dict[str, Any]


def build_record(seq: int, prev: str, event_json: bytes) -> tuple[bytes, str, bytes]:
    """The line (with newline) for an event already serialised to JSON, its hash (hex) and leaf hash."""
    body = b'{"seq":%d,"prev":"%s","event":%s}' % (seq, prev.encode("ascii"), event_json)
    leaf = hashlib.sha256(b"\x00" + body).digest()
    digest = leaf.hex()
    return _PREFIX + digest.encode("ascii") + b'",' + body[1:] + b"\n", digest, leaf


def append_line(seq: int, prev: bytes, event_json: bytes) -> tuple[bytes, bytes, bytes]:
    """:func:`build_record` for the writer's hot path: ``prev`` and the returned hash are hex bytes."""
    body = b'{"seq":%d,"prev":"%s","event":%s}' % (seq, prev, event_json)
    leaf = _sha256(b"\x00" + body).digest()
    digest = leaf.hex().encode("ascii")
    return b'{"hash":"%s",%s\n' % (digest, body[1:]), digest, leaf


_sha256 = hashlib.sha256


def build_line(seq: int, prev: str, event_json: bytes) -> tuple[bytes, str]:
    """The line (with newline) for an event already serialised to JSON, and its hash."""
    line, digest, _ = build_record(seq, prev, event_json)
    return line, digest


def body_of(raw: bytes) -> bytes:
    """The canonical record bytes of a line (the record without its hash field)."""
    return b"{" + raw[BODY_OFFSET:]


def leaf_of(raw: bytes) -> bytes:
    """The RFC 6962 leaf hash of a record line (without newline), recomputed from its bytes."""
    return hashlib.sha256(b"\x00{" + raw[BODY_OFFSET:]).digest()


def parse_line(raw: bytes) -> Record:
    """Parse one line (without its newline). Raises :class:`RecordFormatError` with the reason."""
    if not raw.startswith(_PREFIX) or raw[_HASH_END:BODY_OFFSET] != b'",':
        raise RecordFormatError("line does not start with a record hash")
    stored = raw[len(_PREFIX) : _HASH_END]
    if not _HEX.fullmatch(stored):
        raise RecordFormatError("record hash is not 64 lowercase hex digits")
    body = b"{" + raw[BODY_OFFSET:]
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RecordFormatError(f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise RecordFormatError("record is not a JSON object")
    seq, prev, event = obj.get("seq"), obj.get("prev"), obj.get("event")
    if type(seq) is not int or seq < 1:
        raise RecordFormatError("seq is missing or not a positive integer")
    if not isinstance(prev, str) or not _HEX.fullmatch(prev.encode("ascii", "replace")):
        raise RecordFormatError("prev is missing or not a SHA-256 hex digest")
    if not isinstance(event, dict):
        raise RecordFormatError("event is missing or not an object")
    hash_ok = hashlib.sha256(b"\x00" + body).hexdigest().encode("ascii") == stored
    return Record(seq=seq, prev=prev, hash=stored.decode("ascii"), hash_ok=hash_ok, event=event)


def log_name(day: date) -> str:
    return f"audit-{day.isoformat()}{LOG_SUFFIX}"


def gz_name(day: date) -> str:
    return f"audit-{day.isoformat()}{GZ_SUFFIX}"


def digest_name(day: date) -> str:
    return f"audit-{day.isoformat()}{DIGEST_SUFFIX}"


def checkpoints_name(day: date) -> str:
    return f"audit-{day.isoformat()}{CHECKPOINTS_SUFFIX}"


def pruned_name(day: date) -> str:
    return f"audit-{day.isoformat()}{PRUNED_SUFFIX}"


def classify(name: str) -> tuple[date, str] | None:
    """``(day, kind)`` for an audit file name (kind: log, gz, digest, checkpoints, pruned); else None."""
    match = _DAY_FILE.match(name)
    if match is None:
        return None
    try:
        day = date.fromisoformat(match.group(1))
    except ValueError:
        return None
    return day, _KINDS[match.group(2)]
