"""Identifiers and headers as the gateway lets them through (SPEC C3, I: fail closed on identifiers).

Every id a node names is parsed and put in canonical form before any decision: ``0A1B...``, ``{...}`` and
hyphen-less spellings of a UUID all name the same flow run to Prefect, so a check keyed on the spelling the
node chose could be walked around. An id that does not parse is refused, never waved through. Upstream
receives only the request headers on the allow-list: nothing that can change the method, the target or
the caller's apparent origin (X-HTTP-Method-Override, X-Forwarded-*, Host, Forwarded ...).
"""

from __future__ import annotations

import uuid

from cyxwiz.errors import ValidationError

#: Request headers forwarded to the Prefect API; everything else stays at the gateway.
FORWARDED_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "content-type",
        "user-agent",
        "x-prefect-api-version",
        "prefect-csrf-token",
        "prefect-csrf-client",
    }
)

#: Methods whose requests carry no body (RFC 9110): one sent anyway is refused.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def canonical_uuid_or_none(value: object) -> str | None:
    """``value`` as a lower-case hyphenated UUID, or None when it is not exactly one."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    text = str(parsed)
    return text if text == value.lower() else None


def canonical_uuid(value: object, *, field: str) -> str:
    """``value`` in canonical form, or :class:`ValidationError` (422) naming the field."""
    text = canonical_uuid_or_none(value)
    if text is None:
        raise ValidationError("must be a UUID in canonical 8-4-4-4-12 form", field=field, rule="C3")
    return text


def forwarded_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers that may go upstream, by the allow-list."""
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in FORWARDED_HEADERS:
            out[key] = value.decode("latin-1")
    return out
