"""Ed25519 keys inside a PKCS#11 token (SPEC A7 "beyond", B4, F1, H4), via ``python-pkcs11``.

Keys are generated inside the token (``CKM_EC_EDWARDS_KEY_PAIR_GEN``) as token objects with
``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false, so the private key can neither be read nor wrapped
out; signing is ``CKM_EDDSA`` (pure Ed25519, the signature ``cryptography`` verifies).

PKCS#11 logs in per token and per process, not per session, and a session must not be used by two threads
at once. So one session per (module, token) is shared by every key of that token in this process, used
under its lock, and kept open for the process's life; after a ``fork`` the child re-initialises the module
(PKCS#11 forbids using the parent's state) and opens its own session.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.errors import ConfigError, ConflictError, NotFoundError
from cyxwiz.keys.source import KeyKind, KeySourceError
from cyxwiz.keys.uri import Pkcs11Uri

#: DER of the Ed25519 curve OID 1.3.101.112, CKA_EC_PARAMS for an Edwards key (PKCS#11 3.0 §2.3.10).
ED25519_PARAMS = bytes.fromhex("06032b6570")
_RULE = "A7"


@dataclass
class _Session:
    session: Any
    lock: threading.Lock


_sessions: dict[tuple[str, str, str | None], _Session] = {}
#: Errors after which a new login and a fresh lookup of the same key may succeed.
_SESSION_LOST = {
    "SessionHandleInvalid",
    "SessionClosed",
    "UserNotLoggedIn",
    "DeviceRemoved",
    "TokenNotPresent",
    "ObjectHandleInvalid",
    "KeyHandleInvalid",
    "DeviceError",
}
_sessions_lock = threading.Lock()
_pid = os.getpid()
#: SOFTHSM2_CONF as it was when the module was last initialised: SoftHSM2 reads it only at C_Initialize.
_conf: str | None = os.environ.get("SOFTHSM2_CONF")


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:  # pragma: no cover - a dependency, listed in pyproject
        raise ConfigError(
            "python-pkcs11 is not installed", field="module", rule=_RULE, hint="pip install python-pkcs11"
        ) from None
    return pkcs11


def _fail(exc: Exception, what: str, uri: Pkcs11Uri) -> KeySourceError:
    """A typed error naming the URI (never the PIN) and the token's complaint."""
    name = type(exc).__name__
    hints = {
        "PinIncorrect": "check the PIN source",
        "PinLocked": "the token locked its user PIN: the security officer must reset it",
        "NoSuchToken": "list tokens: softhsm2-util --show-slots (check SOFTHSM2_CONF)",
    }
    return KeySourceError(f"{what}: {name}", path=str(uri), rule=_RULE, hint=hints.get(name))


def _session(uri: Pkcs11Uri, env: Mapping[str, str] | None) -> _Session:
    global _pid, _conf
    pkcs11 = _pkcs11()
    module = uri.module(env)
    key = (module, uri.token, uri.serial)
    with _sessions_lock:
        conf = os.environ.get("SOFTHSM2_CONF")
        if os.getpid() != _pid or conf != _conf:
            # A forked child must not touch the parent's sessions (PKCS#11 v2.40 §6.7.1), and a new
            # SoftHSM2 config is only read by a fresh C_Initialize.
            if os.getpid() == _pid:
                _close_all()
            _sessions.clear()
            _pid, _conf = os.getpid(), conf
            try:
                pkcs11.lib(module).reinitialize()
            except pkcs11.exceptions.PKCS11Error as exc:
                raise _fail(exc, "cannot initialise the PKCS#11 module", uri) from None
        cached = _sessions.get(key)
        if cached is not None:
            return cached
        pin = uri.pin(env)
        try:
            lib = pkcs11.lib(module)
            token = lib.get_token(token_label=uri.token, token_serial=uri.serial)
            session = token.open(user_pin=pin, rw=True)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _fail(exc, "cannot open the token", uri) from None
        finally:
            del pin
        opened = _Session(session=session, lock=threading.Lock())
        _sessions[key] = opened
        return opened


def _close_all() -> None:
    for entry in _sessions.values():
        # Closing a session the token already dropped has nothing left to do.
        with entry.lock, contextlib.suppress(Exception):
            entry.session.close()
    _sessions.clear()


def close_sessions() -> None:
    """Log out and close every cached session (a "restart" in tests; process shutdown)."""
    with _sessions_lock:
        _close_all()


def _find(session: Any, uri: Pkcs11Uri, object_class: Any) -> Any:
    pkcs11 = _pkcs11()
    query: dict[str, Any] = {"object_class": object_class, "key_type": pkcs11.KeyType.EC_EDWARDS}
    if uri.object is not None:
        query["label"] = uri.object
    if uri.id is not None:
        query["id"] = uri.id
    return session.get_key(**query)


def _public_from_point(point: bytes, uri: Pkcs11Uri) -> ed25519.Ed25519PublicKey:
    # CKA_EC_POINT is a DER OCTET STRING (04 20 || key) on SoftHSM2 and most tokens; some return raw bytes.
    raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
    if len(raw) != 32:
        raise KeySourceError("token returned a malformed Ed25519 public key", path=str(uri), rule="A2")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


class Pkcs11KeySource:
    """An Ed25519 private key object in a PKCS#11 token, named by an RFC 7512 URI."""

    def __init__(
        self,
        *,
        uri: Pkcs11Uri,
        entry: _Session,
        private: Any,
        public_key: ed25519.Ed25519PublicKey,
        env: Mapping[str, str] | None = None,
    ):
        self._uri = uri
        self._env = env
        self._entry = entry
        self._private = private
        self._public = public_key

    @classmethod
    def open(cls, uri: str | Pkcs11Uri, *, env: Mapping[str, str] | None = None) -> Pkcs11KeySource:
        """The existing key the URI names (NotFoundError if absent, KeySourceError if the token refuses)."""
        pkcs11 = _pkcs11()
        parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
        entry = _session(parsed, env)
        with entry.lock:
            try:
                private = _find(entry.session, parsed, pkcs11.ObjectClass.PRIVATE_KEY)
                public = _find(entry.session, parsed, pkcs11.ObjectClass.PUBLIC_KEY)
                point = bytes(public[pkcs11.Attribute.EC_POINT])
            except pkcs11.exceptions.NoSuchKey:
                raise NotFoundError(
                    "no Ed25519 key pair with this label/id in the token",
                    path=str(parsed),
                    rule=_RULE,
                    hint="generate it in the token: cyxwiz keys generate --uri '<uri>'",
                ) from None
            except pkcs11.exceptions.MultipleObjectsReturned:
                raise ConfigError(
                    "the URI matches several keys: add id=... to pick one", path=str(parsed), rule=_RULE
                ) from None
            except pkcs11.exceptions.PKCS11Error as exc:
                raise _fail(exc, "cannot read the key", parsed) from None
        source = cls(
            uri=parsed, entry=entry, private=private, public_key=_public_from_point(point, parsed), env=env
        )
        source._check_protected()
        return source

    def _check_protected(self) -> None:
        """Refuse a key that is or ever was exportable, or whose public object is not its own (A7).

        A key imported into the token, or generated extractable, may exist outside it: such a key is not
        an HSM-held key, whatever its label says. A planted public-key object under the same label would
        make every signature unverifiable, so one signature is checked before the key is used.
        """
        flags = self.attributes()
        exposed = [
            name
            for name, want in (
                ("sensitive", True),
                ("extractable", False),
                ("always_sensitive", True),
                ("never_extractable", True),
                ("local", True),
            )
            if flags[name] is not want
        ]
        if exposed:
            raise KeySourceError(
                f"key is or was exportable ({', '.join(exposed)}): refused as a token-held key",
                path=self.uri,
                rule=_RULE,
                hint="generate the key inside the token: cyxwiz keys generate --uri '<uri>'",
            )
        from cyxwiz.keys.source import checked_signature

        checked_signature(self, os.urandom(32))

    @classmethod
    def generate(
        cls, uri: str | Pkcs11Uri, *, env: Mapping[str, str] | None = None, overwrite: bool = False
    ) -> Pkcs11KeySource:
        """Generate the key pair inside the token: sensitive, never extractable, a token object."""
        pkcs11 = _pkcs11()
        parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
        if parsed.object is None:
            raise ConfigError("a new key needs a label: object=...", field="object", rule=_RULE)
        if overwrite:
            raise ConfigError(
                "keys in a token are never overwritten from here",
                path=str(parsed),
                rule=_RULE,
                hint="pick a new object= label, or delete the old key with the token's own tools",
            )
        entry = _session(parsed, env)
        attr = pkcs11.Attribute
        with entry.lock:
            try:
                _find(entry.session, parsed, pkcs11.ObjectClass.PRIVATE_KEY)
            except pkcs11.exceptions.NoSuchKey:
                pass
            except pkcs11.exceptions.MultipleObjectsReturned:
                raise ConflictError(
                    "the token already holds keys with this label", path=str(parsed)
                ) from None
            else:
                raise ConflictError(
                    "the token already holds a key with this label", path=str(parsed), rule=_RULE
                )
            common: dict[Any, Any] = {attr.TOKEN: True, attr.LABEL: parsed.object}
            if parsed.id is not None:
                common[attr.ID] = parsed.id
            try:
                entry.session.generate_keypair(
                    pkcs11.KeyType.EC_EDWARDS,
                    mechanism=pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                    store=True,
                    label=parsed.object,
                    id=parsed.id,
                    public_template={**common, attr.EC_PARAMS: ED25519_PARAMS, attr.VERIFY: True},
                    private_template={
                        **common,
                        attr.PRIVATE: True,
                        attr.SENSITIVE: True,
                        attr.EXTRACTABLE: False,
                        attr.SIGN: True,
                        attr.DECRYPT: False,
                        attr.UNWRAP: False,
                        attr.DERIVE: False,
                    },
                )
            except pkcs11.exceptions.PKCS11Error as exc:
                raise _fail(exc, "the token refused to generate the key", parsed) from None
        return cls.open(parsed, env=env)

    @property
    def kind(self) -> KeyKind:
        return "pkcs11"

    @property
    def uri(self) -> str:
        return str(self._uri)

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        pkcs11 = _pkcs11()
        try:
            return self._sign_once(data)
        except pkcs11.exceptions.PKCS11Error as exc:
            if type(exc).__name__ not in _SESSION_LOST:
                raise _fail(exc, "the token refused to sign", self._uri) from None
        # The session went away (token restarted, logged out, handles invalidated): log in again, find
        # the same key again, and sign once more. A different key under the label is refused.
        self._reopen()
        try:
            return self._sign_once(data)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _fail(exc, "the token refused to sign", self._uri) from None

    def _sign_once(self, data: bytes) -> bytes:
        pkcs11 = _pkcs11()
        with self._entry.lock:
            return bytes(self._private.sign(bytes(data), mechanism=pkcs11.Mechanism.EDDSA))

    def _reopen(self) -> None:
        with _sessions_lock:
            for key, entry in list(_sessions.items()):
                if entry is self._entry:
                    del _sessions[key]
                    with entry.lock, contextlib.suppress(Exception):
                        entry.session.close()
        fresh = type(self).open(self._uri, env=self._env)
        if fresh.public_key != self._public:
            raise KeySourceError("the key under this label changed", path=self.uri, rule=_RULE)
        self._entry, self._private = fresh._entry, fresh._private

    def destroy(self) -> None:
        """Destroy the private and public key objects in the token (a retired key past all use)."""
        pkcs11 = _pkcs11()
        with self._entry.lock:
            try:
                public = _find(self._entry.session, self._uri, pkcs11.ObjectClass.PUBLIC_KEY)
                self._private.destroy()
                public.destroy()
            except pkcs11.exceptions.PKCS11Error as exc:
                raise _fail(exc, "the token refused to destroy the key", self._uri) from None

    def attributes(self) -> dict[str, bool]:
        """The private key's protection attributes, as the token reports them (for checks and tests)."""
        pkcs11 = _pkcs11()
        attr = pkcs11.Attribute
        names = {
            "sensitive": attr.SENSITIVE,
            "extractable": attr.EXTRACTABLE,
            "always_sensitive": attr.ALWAYS_SENSITIVE,
            "never_extractable": attr.NEVER_EXTRACTABLE,
            "local": attr.LOCAL,
        }
        flags: dict[str, bool] = {}
        with self._entry.lock:
            for name, a in names.items():
                try:
                    flags[name] = bool(self._private[a])
                except pkcs11.exceptions.PKCS11Error:
                    # A token that will not say is treated as the unsafe answer (the check then refuses).
                    flags[name] = name == "extractable"
        return flags

    def private_object(self) -> Any:
        """The raw python-pkcs11 key object (tests use it to try extraction and wrapping)."""
        return self._private

    def __repr__(self) -> str:
        return f"Pkcs11KeySource({self.uri!r})"
