"""Keeping secrets out of the audit log (SPEC D2: "logs unencrypted but contain no secrets").

Values under secret-looking keys, and values that look like secrets (compact JWS/JWT, PEM private keys,
HTTP credentials) wherever they appear, become ``"[redacted]"``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

# Keys whose value is a secret whatever it looks like. Compared after lower-casing and turning '-' and
# ' ' into '_'. Deliberately not "*_key": public_key, object_key and idempotency_key are fine to log.
_SECRET_KEYS = frozenset(
    {
        "token",
        "jwt",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "authorization",
        "cookie",
        "set_cookie",
        "credential",
        "credentials",
        "mnemonic",
        "seed",
        "seed_phrase",
        "private_key",
        "secret_key",
        "api_key",
        "apikey",
        "signing_key",
        "master_key",
        "session_key",
        "key_material",
        "keypair",
    }
)
_SECRET_SUFFIXES = (
    "_token",
    "_secret",
    "_password",
    "_passphrase",
    "_private_key",
    "_secret_key",
    "_api_key",
    "_signing_key",
    "_master_key",
    "_credentials",
    "_keypair",
)
# Values that are secrets wherever they appear: compact JWS/JWT, PEM private keys, HTTP credentials.
_SECRET_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"
    r"|(?s:-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z))"
    r"|\b(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}",
    re.IGNORECASE,
)
_MAX_DEPTH = 8


@functools.lru_cache(maxsize=1024)
def is_secret_key(key: str) -> bool:
    # cached: details keys come from a small set of names the code uses (every audit record asks)
    norm = key.strip().lower().replace("-", "_").replace(" ", "_")
    return norm in _SECRET_KEYS or norm.endswith(_SECRET_SUFFIXES)


def redact_text(value: str) -> str:
    """``value`` with every secret-looking substring replaced by ``[redacted]``."""
    if value.isascii():
        # Every match of the pattern in ASCII text holds one of its literal starts, whatever their case:
        # most audited text (ids, wallets, signatures, actions) holds none, and needs no regex. Only ASCII:
        # case-insensitive matching of other text folds more than lower() (``ſ`` matches ``s``).
        lowered = value.lower()
        if (
            "eyj" not in lowered
            and "-----begin" not in lowered
            and "bearer" not in lowered
            and "basic" not in lowered
        ):
            return value
    return _SECRET_VALUE.sub(REDACTED, value)


def redact(value: Any, *, depth: int = 0) -> Any:
    """A copy of a JSON-like value with secrets removed (by key name and by value shape)."""
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        # Deep nesting in an audit record is a smell, and unbounded recursion is a DoS vector.
        return "[truncated: too deep]"
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if is_secret_key(str(k)) else redact(v, depth=depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, depth=depth + 1) for v in value]
    return value
