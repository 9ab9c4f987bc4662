"""RFC 7512 ``pkcs11:`` URIs: which token and object a key lives in (SPEC A7 "beyond": keys in an HSM).

``pkcs11:token=cyxwiz;object=issuing-ca?pin-source=file:/etc/cyxwiz/hsm.pin`` names the private key
labelled ``issuing-ca`` in the token labelled ``cyxwiz``. Path attributes come before ``?`` separated by
``;``, query attributes after it separated by ``&``; values are percent-encoded (RFC 7512 §2.3).

The PIN is never part of a URI here: ``pin-value`` is refused because a URI is configuration, and
configuration ends up in logs, process listings and audit details. The PIN comes from ``pin-source``
(``file:`` a 0600 file, or ``env:NAME``) or from ``CYXWIZ_PKCS11_PIN``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes

from cyxwiz.errors import ConfigError, KeyPermissionError

SCHEME = "pkcs11:"
PIN_ENV = "CYXWIZ_PKCS11_PIN"
MODULE_ENV = "CYXWIZ_PKCS11_MODULE"
#: Where Debian's softhsm2 package puts its module (the token used by tests and ``demo --hsm``).
DEFAULT_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)

_PATH_ATTRS = {"token", "object", "id", "type", "serial", "manufacturer", "model", "slot-id"}
_QUERY_ATTRS = {"pin-source", "module-path", "module-name"}
_RULE = "A7"


def is_pkcs11_uri(value: object) -> bool:
    return isinstance(value, str | os.PathLike) and str(value).startswith(SCHEME)


def _split(text: str, sep: str, *, where: str, allowed: set[str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if not text:
        return attrs
    for part in text.split(sep):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise ConfigError(f"malformed {where} attribute {part!r}", field="uri", rule=_RULE)
        if name == "pin-value":
            raise ConfigError(
                "a PIN inside the URI is refused: configuration is logged",
                field="pin-value",
                rule=_RULE,
                hint=f"use pin-source=file:/path/to/0600-file, pin-source=env:NAME or {PIN_ENV}",
            )
        if name not in allowed:
            raise ConfigError(f"unsupported {where} attribute {name!r}", field="uri", rule=_RULE)
        if name in attrs:
            raise ConfigError(f"attribute {name!r} given twice (RFC 7512 §2.3)", field="uri", rule=_RULE)
        attrs[name] = value  # still percent-encoded: text and byte attributes decode differently
    return attrs


@dataclass(frozen=True, kw_only=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI naming one private key object."""

    token: str
    object: str | None = None
    id: bytes | None = None
    serial: str | None = None
    pin_source: str | None = None
    module_path: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> Pkcs11Uri:
        value = str(text).strip()
        if not value.startswith(SCHEME):
            raise ConfigError("not a pkcs11: URI", field="uri", rule=_RULE)
        path, _, query = value[len(SCHEME) :].partition("?")
        raw = _split(path, ";", where="path", allowed=_PATH_ATTRS)
        raw_params = _split(query, "&", where="query", allowed=_QUERY_ATTRS)
        try:
            attrs = {k: unquote(v, errors="strict") for k, v in raw.items() if k != "id"}
            params = {k: unquote(v, errors="strict") for k, v in raw_params.items()}
        except UnicodeDecodeError:
            raise ConfigError(
                "URI attribute is not valid percent-encoded UTF-8", field="uri", rule=_RULE
            ) from None
        if any("\x00" in v for v in [*attrs.values(), *params.values()]):
            raise ConfigError("NUL byte in a URI attribute", field="uri", rule=_RULE)
        if "token" not in attrs:
            raise ConfigError("the URI must name its token (token=...)", field="token", rule=_RULE)
        if attrs.get("type", "private") not in ("private", "public"):
            raise ConfigError("type must be private (a signing key)", field="type", rule=_RULE)
        if "object" not in attrs and "id" not in raw:
            raise ConfigError("the URI must name its key (object=... or id=...)", field="object", rule=_RULE)
        raw_id = unquote_to_bytes(raw["id"]) if "id" in raw else None
        return cls(
            token=attrs["token"],
            object=attrs.get("object"),
            id=raw_id,
            serial=attrs.get("serial"),
            pin_source=params.get("pin-source"),
            module_path=params.get("module-path"),
            extra={k: v for k, v in attrs.items() if k not in {"token", "object", "id", "serial", "type"}},
        )

    def __str__(self) -> str:
        """The canonical URI (never with a PIN): safe for logs, audit details and errors."""
        parts = [f"token={quote(self.token, safe='')}"]
        if self.object is not None:
            parts.append(f"object={quote(self.object, safe='')}")
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        if self.serial is not None:
            parts.append(f"serial={quote(self.serial, safe='')}")
        query = []
        if self.pin_source is not None:
            query.append(f"pin-source={quote(self.pin_source, safe=':/')}")
        if self.module_path is not None:
            query.append(f"module-path={quote(self.module_path, safe='/')}")
        return SCHEME + ";".join(parts) + ("?" + "&".join(query) if query else "")

    def module(self, env: Mapping[str, str] | None = None) -> str:
        """The PKCS#11 module to load: the URI's module-path, else CYXWIZ_PKCS11_MODULE, else SoftHSM2."""
        env = os.environ if env is None else env
        chosen = self.module_path or env.get(MODULE_ENV)
        if chosen:
            return _checked_module(chosen)
        for candidate in DEFAULT_MODULES:
            if Path(candidate).is_file():
                return candidate
        raise ConfigError(
            "no PKCS#11 module configured and SoftHSM2 is not installed",
            field="module-path",
            rule=_RULE,
            hint=f"set {MODULE_ENV} or add ?module-path=/path/to/module.so (apt-get install softhsm2)",
        )

    def pin(self, env: Mapping[str, str] | None = None) -> str:
        """The user PIN from pin-source or CYXWIZ_PKCS11_PIN. Never logged, never in a message."""
        env = os.environ if env is None else env
        source = self.pin_source
        if source is None:
            value = env.get(PIN_ENV)
            if not value:
                raise ConfigError(
                    "no PIN for the PKCS#11 token",
                    field="pin-source",
                    rule=_RULE,
                    hint=f"export {PIN_ENV} or add ?pin-source=file:/path/to/0600-file to the URI",
                )
            return value
        if source.startswith("env:"):
            name = source[4:]
            value = env.get(name)
            if not value:
                raise ConfigError(f"pin-source variable {name} is not set", field="pin-source", rule=_RULE)
            return value
        if source.startswith("file:"):
            return _pin_from_file(Path(source[5:].removeprefix("//")))
        raise ConfigError("pin-source must be file:/path or env:NAME", field="pin-source", rule=_RULE)


def _checked_module(chosen: str) -> str:
    """A module is code loaded into this process: an absolute path to a regular file that neither it nor
    its directory lets group/others write (a writable one is someone else's code to run here)."""
    path = Path(chosen)
    if not path.is_absolute():
        raise ConfigError(
            "PKCS#11 module path must be absolute", path=chosen, field="module-path", rule=_RULE
        )
    try:
        mode, parent = path.stat().st_mode, path.parent.stat().st_mode
    except OSError:
        raise ConfigError("PKCS#11 module not found", path=chosen, field="module-path", rule=_RULE) from None
    if not stat.S_ISREG(mode):
        raise ConfigError("PKCS#11 module is not a file", path=chosen, field="module-path", rule=_RULE)
    if mode & 0o022 or (parent & 0o022 and not parent & stat.S_ISVTX):
        raise KeyPermissionError(
            "PKCS#11 module (or its directory) is writable by group/others", path=chosen, rule="A4"
        )
    return chosen


def _pin_from_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError("PIN file not found", path=str(path), field="pin-source", rule=_RULE) from None
    if mode & 0o077 or not stat.S_ISREG(mode):
        raise KeyPermissionError(
            f"PIN file has mode {stat.S_IMODE(mode):04o}; group/others must have no access",
            path=str(path),
            rule="A4",
            hint=f"chmod 600 {path}",
        )
    value = path.read_text(encoding="utf-8").strip("\r\n")
    if not value:
        raise ConfigError("PIN file is empty", path=str(path), field="pin-source", rule=_RULE)
    return value
