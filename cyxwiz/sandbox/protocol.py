"""The job-bridge line protocol, host side validation (SPEC E4, E5).

One JSON object per line, UTF-8, at most :data:`MAX_LINE` bytes, ``"v": 1`` and a known ``"kind"``;
each kind has an exact set of fields with checked types and ranges. Anything else is refused with a
typed :class:`BridgeError` (``code`` goes back to the job in an error reply).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from cyxwiz.errors import BridgeError

VERSION = 1
MAX_LINE = 64 * 1024
MAX_METRICS = 64
MAX_NAME = 64
MAX_STEP = 2**53
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

#: kind -> required fields (exactly these, plus "v" and "kind").
FIELDS: dict[str, frozenset[str]] = {
    "hello": frozenset({"job_id"}),
    "progress": frozenset({"step", "total"}),
    "metrics": frozenset({"step", "values"}),
    "checkpoint": frozenset({"step", "weights_sha256", "batch_indices_sha256", "path"}),
    "file_request": frozenset({"path"}),
}


class ProtocolError(BridgeError):
    """A line broke the protocol; ``reply_code`` is sent back to the job."""

    def __init__(self, message: str, *, reply_code: str, field: str | None = None) -> None:
        super().__init__(message, field=field, rule="E4")
        self.reply_code = reply_code


def _step(msg: dict[str, Any], name: str = "step") -> int:
    value = msg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEP:
        raise ProtocolError(f"{name} must be a non-negative integer", reply_code="bad-field", field=name)
    return value


def _hex(msg: dict[str, Any], name: str) -> str:
    value = msg.get(name)
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ProtocolError(f"{name} must be 64 lowercase hex digits", reply_code="bad-field", field=name)
    return value


def parse_line(line: bytes) -> dict[str, Any]:  # noqa: PLR0912 (one branch per rule)
    """Decode and validate one line (without its newline). Path fields are checked by the server."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes", reply_code="too-large")
    try:
        text = line.decode("utf-8")
        msg = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not UTF-8 JSON: {exc}", reply_code="bad-json") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object", reply_code="bad-json")
    if msg.get("v") != VERSION or isinstance(msg.get("v"), bool):
        raise ProtocolError(
            f"unsupported protocol version {msg.get('v')!r}", reply_code="bad-version", field="v"
        )
    kind = msg.get("kind")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise ProtocolError(f"unknown message kind {kind!r}", reply_code="unknown-kind", field="kind")
    extra = set(msg) - FIELDS[kind] - {"v", "kind"}
    missing = FIELDS[kind] - set(msg)
    if extra or missing:
        what = f"unexpected {sorted(extra)}" if extra else f"missing {sorted(missing)}"
        raise ProtocolError(f"{kind}: {what}", reply_code="bad-field")
    if kind == "hello":
        if not isinstance(msg["job_id"], str) or not _JOB_ID.match(msg["job_id"]):
            raise ProtocolError(
                "job_id must be 1-128 safe characters", reply_code="bad-field", field="job_id"
            )
    elif kind == "progress":
        step, total = _step(msg), _step(msg, "total")
        if total < 1 or step > total:
            raise ProtocolError(
                "need 0 <= step <= total and total >= 1", reply_code="bad-field", field="step"
            )
    elif kind == "metrics":
        _step(msg)
        values = msg["values"]
        if not isinstance(values, dict) or not 0 < len(values) <= MAX_METRICS:
            raise ProtocolError(
                f"values must be an object of 1-{MAX_METRICS} metrics", reply_code="bad-field"
            )
        for key, value in values.items():
            if not _METRIC_NAME.match(key):
                raise ProtocolError(f"bad metric name {key[:80]!r}", reply_code="bad-field", field="values")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ProtocolError(
                    f"metric {key} must be a finite number", reply_code="bad-field", field=key
                )
    elif kind == "checkpoint":
        _step(msg)
        _hex(msg, "weights_sha256")
        _hex(msg, "batch_indices_sha256")
    return msg


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def encode(msg: dict[str, Any]) -> bytes:
    # ASCII-escaped: a lone surrogate echoed back in an error must not break the encoder.
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def error_reply(code: str, message: str, *, path: str | None = None) -> bytes:
    """An error line; answers to a ``file_request`` also carry its ``path`` so the job can match them."""
    reply: dict[str, Any] = {"v": VERSION, "kind": "error", "code": code, "message": message[:500]}
    if path is not None:
        reply["path"] = path
    return encode(reply)
