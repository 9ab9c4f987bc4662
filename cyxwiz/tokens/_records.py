"""``ring.json`` records of a key ring and their parsing (SPEC B4); private to :mod:`cyxwiz.tokens`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cyxwiz.errors import ConfigError
from cyxwiz.tokens.keys import TokenKey, b64url, b64url_decode, load_ed25519_pem


def parse_json(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} is not JSON", rule="B4") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} is not a JSON object", rule="B4")
    return data


def key_record(key: TokenKey, *, inline: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kid": key.kid,
        "alg": key.alg,
        "created_at": key.created_at.isoformat(),
        "retired_at": key.retired_at.isoformat() if key.retired_at else None,
    }
    if inline:
        record["secret"] = key.private_pem().decode() if key.alg == "EdDSA" else b64url(key.secret or b"")
    return record


def key_from_record(record: Mapping[str, Any], *, secret: bytes | None) -> TokenKey:
    try:
        alg, kid = record["alg"], record["kid"]
        created = datetime.fromisoformat(record["created_at"])
        retired = datetime.fromisoformat(record["retired_at"]) if record.get("retired_at") else None
        raw = secret if secret is not None else str(record["secret"]).encode()
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("malformed key record", field="keys", rule="B4") from exc
    if alg == "EdDSA":
        key = TokenKey.from_private_key(load_ed25519_pem(raw, source=f"key {kid}"), now=created)
    elif alg == "HS256":
        key = TokenKey.from_secret(b64url_decode(raw.decode()), now=created, kid=kid)
    else:
        raise ConfigError("unknown algorithm", field="alg", rule="B3")
    if key.kid != kid:
        raise ConfigError("stored kid does not match the key", field="kid", rule="B4")
    return key.retire(retired) if retired else key
