"""Object key layout shared by every backend (SPEC D2, D3, H3).

::

    jobs/{job_id}/inputs/{name}        what the user uploaded for a job (nodes GET these via presigned URLs)
    jobs/{job_id}/outputs/{name}       what the node produced (nodes PUT these via presigned URLs)
    jobs/{job_id}/proof.json           the node's signed completion proof
    jobs/{job_id}/verification.json    the control plane's verification report
    jobs/{job_id}/manifest.json        signed list of every object of the job with its hashes
    audit/{YYYY-MM-DD}.jsonl.gz        one day of the audit log (H3), stored encrypted
    audit/{YYYY-MM-DD}.digest.json     that day's signed digest (H4)
    blobs/sha256/{hh}/{hex}            content-addressed objects (deduplicated datasets)

Keys are validated strictly here so that no backend ever sees ``..``, absolute paths, control characters
or odd encodings: a key is a plain ASCII path that maps to the same file name on every filesystem.
"""

from __future__ import annotations

import datetime as _dt
import re

from cyxwiz.errors import ValidationError
from cyxwiz.ids import JOB_ID as _JOB_ID

MAX_KEY_BYTES = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_=+@-][A-Za-z0-9._=+@-]{0,254}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

MANIFEST_NAME = "manifest.json"


def validate_key(key: str, *, field: str = "key") -> str:
    """Return ``key`` unchanged when it is a safe object key, else raise ValidationError naming the rule.

    Segments must not start with a dot: that refuses ``.``/``..`` and keeps names starting with a dot
    free for the local backend's own bookkeeping (temporary files, metadata).
    """
    if not isinstance(key, str) or not key:
        raise ValidationError("object key must be a non-empty string", field=field, rule="D3")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValidationError(f"object key longer than {MAX_KEY_BYTES} bytes", field=field, rule="D3")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise ValidationError(
                f"object key segment {segment!r} is not allowed (ASCII letters, digits and ._=+@- only; "
                "no empty, '.' or '..' segments, no leading dot)",
                field=field,
                rule="E5",
            )
    return key


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValidationError(
            "job id must be the canonical form job-<20 lower-case hex> (cyxwiz.ids)",
            field="job_id",
            rule="C3",
        )
    return job_id


def _name(name: str) -> str:
    return validate_key(name, field="name")


def job_prefix(job_id: str) -> str:
    """``jobs/{job_id}/`` — everything of one job, and nothing of any other (C3)."""
    return f"jobs/{validate_job_id(job_id)}/"


def job_inputs_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}inputs/"


def job_outputs_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}outputs/"


def job_input(job_id: str, name: str) -> str:
    return job_inputs_prefix(job_id) + _name(name)


def job_output(job_id: str, name: str) -> str:
    return job_outputs_prefix(job_id) + _name(name)


def job_proof(job_id: str) -> str:
    return f"{job_prefix(job_id)}proof.json"


def job_verification(job_id: str) -> str:
    return f"{job_prefix(job_id)}verification.json"


def job_manifest(job_id: str) -> str:
    return job_prefix(job_id) + MANIFEST_NAME


def _day(date: _dt.date | str) -> str:
    if isinstance(date, _dt.datetime):
        return date.date().isoformat()
    if isinstance(date, _dt.date):
        return date.isoformat()
    try:
        return _dt.date.fromisoformat(date).isoformat()
    except (TypeError, ValueError):
        raise ValidationError("date must be YYYY-MM-DD", field="date", rule="H3") from None


def audit_day(date: _dt.date | str) -> str:
    """``audit/{YYYY-MM-DD}.jsonl.gz`` (H3)."""
    return f"audit/{_day(date)}.jsonl.gz"


def audit_digest(date: _dt.date | str) -> str:
    """``audit/{YYYY-MM-DD}.digest.json`` (H4)."""
    return f"audit/{_day(date)}.digest.json"


def audit_manifest() -> str:
    return "audit/" + MANIFEST_NAME


def blob(sha256_hex: str) -> str:
    """Content-addressed key for a SHA-256 (lower-case hex); the key itself proves the content."""
    if not isinstance(sha256_hex, str) or not _HEX64.fullmatch(sha256_hex):
        raise ValidationError("sha256 must be 64 lower-case hex digits", field="sha256", rule="D3")
    return f"blobs/sha256/{sha256_hex[:2]}/{sha256_hex}"


def job_of(key: str) -> str | None:
    """The job a key belongs to, or None for keys outside ``jobs/``."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] == "jobs" and _JOB_ID.fullmatch(parts[1]):
        return parts[1]
    return None


def manifest_for(key: str) -> str | None:
    """The manifest that lists ``key``: the job's for job objects, ``audit/manifest.json`` for audit days."""
    job_id = job_of(key)
    if job_id is not None:
        return job_manifest(job_id)
    if key.startswith("audit/"):
        return audit_manifest()
    return None


def is_manifest(key: str) -> bool:
    return manifest_for(key) == key
