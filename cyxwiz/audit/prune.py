"""Signed prune markers: the only thing that lets a day's records be missing locally (SPEC H3, H4).

Retention removes a closed day's gzipped records after the archive holds them. Before it does, it writes
``audit-DAY.pruned.json``: the day, the SHA-256 of the gzip and of the day's digest, where the archive
keeps them, when, signed by the audit key. ``verify`` accepts a missing day with a valid marker (the
pinned key) and reports every other missing day as deleted, whatever its age.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cyxwiz.audit.digest import check_signature, key_id, sign_json, write_atomic
from cyxwiz.audit.records import pruned_name

MARKER_VERSION = 1


def write_prune_marker(
    directory: Path,
    *,
    day: date,
    gz: Path,
    digest: bytes,
    archive_keys: list[str],
    key: Ed25519PrivateKey,
    at: datetime,
) -> Path:
    body: dict[str, Any] = {
        "v": MARKER_VERSION,
        "day": day.isoformat(),
        "gz_sha256": hashlib.sha256(gz.read_bytes()).hexdigest(),
        "digest_sha256": hashlib.sha256(digest).hexdigest(),
        "archive_keys": archive_keys,
        "pruned_at": at.astimezone(UTC).isoformat(),
        "key_id": key_id(key.public_key()),
    }
    body["signature"] = sign_json(body, key)
    path = directory / pruned_name(day)
    write_atomic(path, json.dumps(body, sort_keys=True, indent=1).encode("ascii") + b"\n")
    return path


def check_prune_marker(path: Path, *, day: date, digest: bytes, trusted: Ed25519PublicKey) -> str | None:
    """None when ``path`` is a valid marker for ``day`` (signed by ``trusted``, naming this digest)."""
    try:
        marker = json.loads(path.read_bytes())
        if not isinstance(marker, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        return f"unreadable prune marker ({exc})"
    why = check_signature(marker, trusted=trusted, what="prune marker")
    if why is not None:
        return why
    if marker.get("day") != day.isoformat():
        return f"prune marker is for day {marker.get('day')}"
    if marker.get("digest_sha256") != hashlib.sha256(digest).hexdigest():
        return "prune marker names another digest for this day"
    return None
