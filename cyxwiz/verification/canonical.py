"""Canonical JSON in the style of RFC 8785 (JCS): the bytes every signature and hash in cyxwiz covers.

Rules: objects with keys sorted by their UTF-16 code units, no whitespace, strings with the minimal
escapes of ECMAScript ``JSON.stringify``, numbers in ECMAScript's shortest round-trip form (``1e-7``,
``100``, ``1.5``). Integers must be exactly representable as IEEE doubles (|n| ≤ 2**53) and floats finite,
so every JCS implementation produces the same bytes; anything else is refused rather than guessed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from cyxwiz.errors import ValidationError

_MAX_SAFE_INT = 2**53
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\\ud800-\udfff]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(value: str) -> str:
    if not _NEEDS_ESCAPE.search(value):  # the common case: nothing to escape
        return f'"{value}"'
    out = ['"']
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValidationError("lone surrogate in a string cannot be encoded as UTF-8", rule="RFC8785")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise ValidationError(f"{value!r} has no JSON form", rule="RFC8785")
    if value == 0:
        return "0"  # also for -0.0, as ECMAScript does
    sign = "-" if value < 0 else ""
    # repr gives the shortest round-trip digits, as ECMAScript's Number::toString does.
    parsed = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, parsed.digits))
    k = len(digits)
    n = k + int(parsed.exponent)  # value = 0.<digits> × 10^n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exp = n - 1
        exp_str = f"e+{exp}" if exp >= 0 else f"e-{-exp}"
        text = (digits if k == 1 else digits[0] + "." + digits[1:]) + exp_str
    return sign + text


def _integer(value: int) -> str:
    if abs(value) <= _MAX_SAFE_INT:
        return str(value)
    # JSON numbers are IEEE doubles for every JCS implementation: only exactly representable ones are safe.
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf
    if not math.isfinite(as_float) or int(as_float) != value:
        raise ValidationError(
            f"integer {value} is not exactly representable in JSON numbers",
            rule="RFC8785",
            hint="encode it as a string",
        )
    return _float(as_float)


def _encode(value: Any, out: list[str], depth: int) -> None:  # noqa: PLR0912 (one branch per JSON type)
    if depth > 64:
        raise ValidationError("nesting deeper than 64 levels", rule="RFC8785")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(_integer(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ValidationError(f"object key {key!r} is not a string", rule="RFC8785")
        out.append("{")
        # JCS sorts by UTF-16 code units, which differs from code point order only above U+FFFF.
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out, depth + 1)
        out.append("]")
    else:
        raise ValidationError(f"{type(value).__name__} has no canonical JSON form", rule="RFC8785")


def canonical_json(obj: Any) -> bytes:
    """The RFC 8785 style canonical UTF-8 bytes of a JSON-compatible value."""
    out: list[str] = []
    _encode(obj, out, 0)
    return "".join(out).encode("utf-8")


def canonical_sha256(obj: Any) -> str:
    """Hex SHA-256 of :func:`canonical_json` (how cyxwiz names a JSON document by content)."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()
