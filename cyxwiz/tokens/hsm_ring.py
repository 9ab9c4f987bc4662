"""A token signing key ring whose keys live in a PKCS#11 token (SPEC B4 with A7 "beyond").

The ring directory keeps its ``ring.json`` (metadata, no secrets) as for file keys, plus the ``pkcs11:``
URI under which new keys are made (its ``object=`` is a label prefix). Each key record names its key by
URI instead of a ``<kid>.key`` file. Rotation generates the new key inside the token (non-extractable,
:meth:`~cyxwiz.keys.pkcs11.Pkcs11KeySource.generate`): a token-held ring never holds a key file, and a
software key offered to it is refused rather than written out. Pruning a key past its verification window
destroys its objects in the token, as the file ring deletes a pruned key's file.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cyxwiz.errors import ConfigError
from cyxwiz.tokens.keys import Algorithm, TokenKey

#: ``ring.json`` key holding the template URI of a token-held ring.
RING_FIELD = "pkcs11"
_RULE = "B4"

KeyFactory = Callable[[Algorithm, datetime], TokenKey]


def check_template(template: str) -> str:
    """The URI new keys are made under: a ``pkcs11:`` URI naming a label prefix, no ``id=``."""
    from cyxwiz.keys.uri import Pkcs11Uri, is_pkcs11_uri

    if not is_pkcs11_uri(template):
        raise ConfigError("a token-held key ring needs a pkcs11: URI", field=RING_FIELD, rule=_RULE)
    parsed = Pkcs11Uri.parse(template)
    if parsed.object is None or parsed.id is not None:
        raise ConfigError(
            "the ring's URI names a label prefix (object=...) and no id=",
            field=RING_FIELD,
            path=str(parsed),
            rule=_RULE,
        )
    return str(parsed)


def token_key_factory(template: str) -> KeyFactory:
    """Rotation for a token-held ring: each new signing key is generated inside the token."""
    checked = check_template(template)

    def generate(alg: Algorithm, now: datetime) -> TokenKey:
        from cyxwiz.keys.pkcs11 import Pkcs11KeySource
        from cyxwiz.keys.uri import Pkcs11Uri

        if alg != "EdDSA":
            raise ConfigError("a token-held ring signs with Ed25519 only", field="alg", rule="B3")
        base = Pkcs11Uri.parse(checked)
        label = f"{base.object}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        uri = Pkcs11Uri(
            token=base.token,
            object=label,
            serial=base.serial,
            pin_source=base.pin_source,
            module_path=base.module_path,
        )
        return key_from_source(Pkcs11KeySource.generate(uri), now=now)

    return generate


def refuse_new_key(alg: Algorithm, now: datetime) -> TokenKey:
    raise ConfigError(
        "a ring over one token key cannot make the next key itself",
        field="pkcs11",
        rule="B4",
        hint="keep the ring in a directory bound to the token: cyxwiz token init DIR --pkcs11 'pkcs11:...'",
    )


def key_from_source(source: Any, *, now: datetime) -> TokenKey:
    from cyxwiz.keys import as_private_key

    return TokenKey.from_private_key(as_private_key(source), now=now)


def uri_of(key: TokenKey) -> str | None:
    """The ``pkcs11:`` URI of a token-held key, or None for any other key."""
    from cyxwiz.keys import SourcePrivateKey

    private = key.private_key
    if isinstance(private, SourcePrivateKey) and private.source.kind == "pkcs11":
        return private.source.uri
    return None


def record_of(key: TokenKey) -> dict[str, Any]:
    """The ``ring.json`` record of a key in a token-held ring; a key outside the token is refused."""
    uri = uri_of(key)
    if uri is None:
        raise ConfigError(
            f"key {key.kid} is not held by the token: a token-held ring writes no key files",
            field="keys",
            rule=_RULE,
            hint="rotate through the ring (the new key is generated in the token)",
        )
    return {
        "kid": key.kid,
        "alg": key.alg,
        "created_at": key.created_at.isoformat(),
        "retired_at": key.retired_at.isoformat() if key.retired_at else None,
        "uri": uri,
    }


def key_of(record: Mapping[str, Any], *, source: str) -> TokenKey:
    """Open a recorded key in the token; the key found must be the one whose kid the ring recorded."""
    from cyxwiz.keys.pkcs11 import Pkcs11KeySource
    from cyxwiz.keys.uri import is_pkcs11_uri

    uri, kid = record.get("uri"), record.get("kid")
    if not isinstance(uri, str) or not is_pkcs11_uri(uri) or "secret" in record:
        raise ConfigError(
            "a token-held ring's keys are pkcs11: URIs, never key material",
            field="keys",
            path=source,
            rule=_RULE,
        )
    try:
        created = datetime.fromisoformat(str(record["created_at"]))
        retired = datetime.fromisoformat(record["retired_at"]) if record.get("retired_at") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("malformed key record", field="keys", path=source, rule=_RULE) from exc
    key = key_from_source(Pkcs11KeySource.open(uri), now=created)
    if key.kid != kid:
        raise ConfigError(
            "the token's key under this URI is not the recorded one", field="kid", path=uri, rule=_RULE
        )
    return key.retire(retired) if retired else key


def destroy(uris: Iterable[str]) -> list[str]:
    """Destroy the token objects of pruned keys (every token they signed has expired)."""
    from cyxwiz.keys.pkcs11 import Pkcs11KeySource

    gone = []
    for uri in uris:
        Pkcs11KeySource.open(uri).destroy()
        gone.append(uri)
    return gone


def load_token_held(data: Mapping[str, Any], *, source: str) -> list[TokenKey]:
    """The keys of a token-held ``ring.json``, each opened in the token."""
    check_template(str(data.get(RING_FIELD)))
    return [key_of(r, source=source) for r in data.get("keys", [])]


def save_token_held(meta_path: Path, ring: Any) -> None:
    """Write a token-held ring's ``ring.json`` (URIs, no key material), then destroy pruned keys."""
    from cyxwiz.tokens._files import write_private

    records = [record_of(k) for k in ring.all_keys()]  # refuses any key outside the token
    before: list[str] = []
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if isinstance(old, dict) and old.get(RING_FIELD) == ring.pkcs11:
            before = [str(r.get("uri")) for r in old.get("keys", []) if isinstance(r, dict)]
    write_private(meta_path, json.dumps({**ring._meta(), "keys": records}, indent=2).encode())
    # Only once the new ring.json is in place: a pruned key (every token it signed has expired) leaves
    # the token, as a file ring deletes a pruned key's file.
    kept = {r["uri"] for r in records}
    destroy(uri for uri in before if uri not in kept)


__all__ = [
    "RING_FIELD",
    "KeyFactory",
    "check_template",
    "destroy",
    "key_of",
    "load_token_held",
    "record_of",
    "refuse_new_key",
    "save_token_held",
    "token_key_factory",
    "uri_of",
]
