"""The key ring (SPEC B4): one signing key, older public keys kept until their tokens have expired.

Rotation retires the signing key and starts a new one. A retired key is kept for verification for
exactly ``max_token_lifetime`` after it stopped signing: no token it signed can outlive that, so the
bound holds across processes and restarts without tracking every token's ``exp``. Then it is dropped.

Sources: a key-ring directory (``ring.json`` + one 0600 file per key, or ``ring.json`` naming keys in a
PKCS#11 token, :mod:`cyxwiz.tokens.hsm_ring`), one PEM key from an env var or file, or a
:class:`SecretStore` (the Prefect layer adapts a Secret block to it).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cyxwiz.errors import ConfigError, NotFoundError
from cyxwiz.pki.keys import load_private_key
from cyxwiz.tokens._files import read_private, write_private
from cyxwiz.tokens._records import key_from_record as _key_from_record
from cyxwiz.tokens._records import key_record as _key_record
from cyxwiz.tokens._records import parse_json as _parse_json
from cyxwiz.tokens.keys import Algorithm, TokenKey, b64url, b64url_decode, load_ed25519_pem, valid_kid
from cyxwiz.tokens.kinds import MAX_TOKEN_LIFETIME

if TYPE_CHECKING:
    from cyxwiz.keys import KeySource

Clock = Callable[[], datetime]

DEFAULT_ROTATION = timedelta(days=30)
HS256_HINT = "HS256 lets every verifier mint tokens; use it only where the issuer is the sole verifier"


def utcnow() -> datetime:
    return datetime.now(UTC)


class SecretStore(Protocol):
    """Where a key ring may live as one secret (the Prefect layer adapts a Secret block to this)."""

    def get_secret(self, name: str) -> str | None: ...

    def set_secret(self, name: str, value: str) -> None: ...


class MemorySecretStore:
    """A dict-backed :class:`SecretStore` (tests, single-process setups)."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def get_secret(self, name: str) -> str | None:
        return self._data.get(name)

    def set_secret(self, name: str, value: str) -> None:
        self._data[name] = value


class KeyRing:
    """Signing and verification keys with rotation. Thread-safe; :meth:`lookup` is the hot path."""

    def __init__(
        self,
        *,
        keys: Sequence[TokenKey],
        rotation_period: timedelta = DEFAULT_ROTATION,
        max_token_lifetime: timedelta = MAX_TOKEN_LIFETIME,
        issuer_is_sole_verifier: bool = False,
        pkcs11: str | None = None,
    ) -> None:
        """``pkcs11``: the URI (label prefix) under which a token-held ring generates its keys
        (:mod:`cyxwiz.tokens.hsm_ring`); rotation then never makes a software key."""
        if rotation_period <= timedelta(0) or max_token_lifetime <= timedelta(0):
            raise ConfigError("rotation period and max token lifetime must be positive", rule="B4")
        if any(k.alg == "HS256" for k in keys) and not issuer_is_sole_verifier:
            raise ConfigError(
                "HS256 key in a ring not marked issuer_is_sole_verifier",
                field="alg",
                rule="B3",
                hint=HS256_HINT,
            )
        self.rotation_period = rotation_period
        self.max_token_lifetime = max_token_lifetime
        self.issuer_is_sole_verifier = issuer_is_sole_verifier
        self._lock = threading.Lock()
        self._keys: dict[str, TokenKey] = {k.kid: k for k in keys}
        self.pkcs11 = pkcs11
        self._new_key: Callable[[Algorithm, datetime], TokenKey] = _software_key
        if pkcs11 is not None:
            from cyxwiz.tokens.hsm_ring import token_key_factory

            self._new_key = token_key_factory(pkcs11)

    # -- factories -------------------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        *,
        alg: Algorithm = "EdDSA",
        now: datetime | None = None,
        rotation_period: timedelta = DEFAULT_ROTATION,
        max_token_lifetime: timedelta = MAX_TOKEN_LIFETIME,
        issuer_is_sole_verifier: bool | None = None,
    ) -> KeyRing:
        """A fresh ring with one key. HS256 implies ``issuer_is_sole_verifier`` (the caller chose it)."""
        return cls(
            keys=[TokenKey.generate(alg=alg, now=now or utcnow())],
            rotation_period=rotation_period,
            max_token_lifetime=max_token_lifetime,
            issuer_is_sole_verifier=alg == "HS256"
            if issuer_is_sole_verifier is None
            else issuer_is_sole_verifier,
        )

    @classmethod
    def from_file(cls, path: Path, *, now: datetime | None = None) -> KeyRing:
        """One Ed25519 PKCS#8 PEM key file (mode 0600) as a single-key ring; rotation is managed outside.

        A ``pkcs11:`` URI in place of the path names a key in a PKCS#11 token (:meth:`from_key_source`)."""
        from cyxwiz.keys import is_pkcs11_uri, open_key_source

        if is_pkcs11_uri(str(path)):
            return cls.from_key_source(open_key_source(str(path)), now=now)
        return cls(keys=[TokenKey.from_private_key(load_private_key(path), now=now or utcnow())])

    @classmethod
    def from_key_source(cls, source: KeySource, *, now: datetime | None = None) -> KeyRing:
        """A single-key ring signing through a :class:`~cyxwiz.keys.KeySource` (e.g. a key in an HSM, A7).

        The key cannot be serialised, so such a ring is never written to a directory or secret store;
        rotation means a new key in the token and a new ring (the old public key goes in its JWKS)."""
        from cyxwiz.keys import as_private_key

        ring = cls(keys=[TokenKey.from_private_key(as_private_key(source), now=now or utcnow())])
        if source.kind != "file":
            from cyxwiz.tokens.hsm_ring import refuse_new_key

            ring._new_key = refuse_new_key  # a rotation must not fall back to a software key
        return ring

    @classmethod
    def in_token(cls, pkcs11: str, *, now: datetime | None = None, **options: Any) -> KeyRing:
        """A token-held ring: its first key and every later one generated in the token under the
        ``pkcs11`` label prefix (:mod:`cyxwiz.tokens.hsm_ring`; :class:`DirKeyRingStore` saves
        ``ring.json`` only, no key files)."""
        from cyxwiz.tokens.hsm_ring import token_key_factory

        return cls(keys=[token_key_factory(pkcs11)("EdDSA", now or utcnow())], pkcs11=pkcs11, **options)

    @classmethod
    def from_dir(cls, path: Path) -> KeyRing:
        return DirKeyRingStore(path).load()

    @classmethod
    def from_secret_store(cls, store: SecretStore, name: str = "cyxwiz-token-keyring") -> KeyRing:
        return SecretKeyRingStore(store, name).load()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeyRing:
        """``CYXWIZ_TOKEN_KEYRING_DIR`` | ``CYXWIZ_TOKEN_SIGNING_KEY`` (PEM text) |
        ``CYXWIZ_TOKEN_SIGNING_KEY_FILE`` | ``CYXWIZ_TOKEN_HS256_SECRET`` (base64url, needs
        ``CYXWIZ_TOKEN_SOLE_VERIFIER=1``). Exactly one must be set."""
        env = os.environ if env is None else env
        names = [
            "CYXWIZ_TOKEN_KEYRING_DIR",
            "CYXWIZ_TOKEN_SIGNING_KEY",
            "CYXWIZ_TOKEN_SIGNING_KEY_FILE",
            "CYXWIZ_TOKEN_HS256_SECRET",
        ]
        present = [n for n in names if env.get(n)]
        if len(present) != 1:
            raise ConfigError(f"set exactly one of {', '.join(names)}", field="env", rule="B4")
        name, value = present[0], env[present[0]]
        if name == "CYXWIZ_TOKEN_KEYRING_DIR":
            return cls.from_dir(Path(value))
        if name == "CYXWIZ_TOKEN_SIGNING_KEY_FILE":
            return cls.from_file(Path(value))
        if name == "CYXWIZ_TOKEN_SIGNING_KEY":
            key = load_ed25519_pem(value.encode(), source=name)
            return cls(keys=[TokenKey.from_private_key(key, now=utcnow())])
        if env.get("CYXWIZ_TOKEN_SOLE_VERIFIER") != "1":
            raise ConfigError(
                "HS256 needs CYXWIZ_TOKEN_SOLE_VERIFIER=1", field=name, rule="B3", hint=HS256_HINT
            )
        try:
            secret = b64url_decode(value)
        except ValueError as exc:
            raise ConfigError("not base64url", field=name, rule="B3") from exc
        return cls(keys=[TokenKey.from_secret(secret, now=utcnow())], issuer_is_sole_verifier=True)

    # -- queries ---------------------------------------------------------------------------------

    def all_keys(self) -> list[TokenKey]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: k.created_at)

    @property
    def signing_key(self) -> TokenKey:
        with self._lock:
            active = [k for k in self._keys.values() if k.retired_at is None and k.can_sign]
        if not active:
            raise NotFoundError("the key ring has no active signing key", field="keys", rule="B4")
        return max(active, key=lambda k: k.created_at)

    def verify_until(self, key: TokenKey) -> datetime | None:
        return None if key.retired_at is None else key.retired_at + self.max_token_lifetime

    def lookup(self, kid: str, *, now: datetime) -> TokenKey | None:
        """The verification key for ``kid``, or None when unknown or past its keep-until time."""
        key = self._keys.get(kid)
        if key is None:
            return None
        if key.retired_at is not None and now > key.retired_at + self.max_token_lifetime:
            return None
        return key

    def jwks(self, *, now: datetime | None = None) -> dict[str, list[dict[str, str]]]:
        """Public keys still needed for verification (HS256 secrets are never published)."""
        now = now or utcnow()
        return {
            "keys": [
                k.public_jwk()
                for k in self.all_keys()
                if k.public_key is not None and self.lookup(k.kid, now=now)
            ]
        }

    def rotation_due(self, *, now: datetime) -> bool:
        return now - self.signing_key.created_at >= self.rotation_period

    # -- changes ---------------------------------------------------------------------------------

    def rotate(self, *, now: datetime, alg: Algorithm | None = None) -> TokenKey:
        """Start a new signing key and retire the current one (its public key stays for verification)."""
        alg = alg or self.signing_key.alg
        if alg == "HS256" and not self.issuer_is_sole_verifier:
            raise ConfigError("HS256 needs issuer_is_sole_verifier", field="alg", rule="B3", hint=HS256_HINT)
        new = self._new_key(alg, now)
        with self._lock:
            for kid, key in list(self._keys.items()):
                self._keys[kid] = key.retire(now)
            self._keys[new.kid] = new
        return new

    def adopt(self, other: KeyRing) -> None:
        """Take ``other``'s keys in place (a rotation written by another process): every issuer and
        verifier holding this ring sees them at once, without restart (B4)."""
        keys = {k.kid: k for k in other.all_keys()}
        with self._lock:
            self._keys = keys
            # ... and where its next key is made: a ring now held in a token never rotates into a file
            self.pkcs11, self._new_key = other.pkcs11, other._new_key

    def prune(self, *, now: datetime) -> list[str]:
        """Drop retired keys whose last possible token has expired; return their kids."""
        with self._lock:
            gone = [
                kid
                for kid, k in self._keys.items()
                if k.retired_at is not None and now > k.retired_at + self.max_token_lifetime
            ]
            for kid in gone:
                del self._keys[kid]
        return gone

    # -- serialisation (contains secrets: only for 0600 files and secret stores) -----------------

    def to_secret_json(self) -> str:
        if self.pkcs11 is not None:
            raise ConfigError(
                "a token-held ring's keys cannot be put in a secret store", field="pkcs11", rule="B4"
            )
        return json.dumps({**self._meta(), "keys": [_key_record(k, inline=True) for k in self.all_keys()]})

    @classmethod
    def from_secret_json(cls, text: str) -> KeyRing:
        data = _parse_json(text, "keyring secret")
        return cls._from_meta(data, [_key_from_record(r, secret=None) for r in data.get("keys", [])])

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "version": 1,
            "rotation_days": self.rotation_period / timedelta(days=1),
            "max_token_lifetime_s": int(self.max_token_lifetime.total_seconds()),
            "issuer_is_sole_verifier": self.issuer_is_sole_verifier,
        }
        if self.pkcs11 is not None:
            meta["pkcs11"] = self.pkcs11
        return meta

    @classmethod
    def _from_meta(cls, data: Mapping[str, Any], keys: list[TokenKey]) -> KeyRing:
        if data.get("version") != 1:
            raise ConfigError("unsupported key ring version", field="version", rule="B4")
        return cls(
            keys=keys,
            rotation_period=timedelta(days=float(data.get("rotation_days", 30))),
            max_token_lifetime=timedelta(seconds=int(data.get("max_token_lifetime_s", 7 * 86400))),
            issuer_is_sole_verifier=bool(data.get("issuer_is_sole_verifier", False)),
            pkcs11=data.get("pkcs11"),
        )


def _software_key(alg: Algorithm, now: datetime) -> TokenKey:
    return TokenKey.generate(alg=alg, now=now)


class KeyRingStore(Protocol):
    def load(self) -> KeyRing: ...

    def save(self, ring: KeyRing) -> None: ...


@dataclass(frozen=True)
class DirKeyRingStore:
    """``ring.json`` (metadata, no secrets) plus ``<kid>.key`` files (0600) in a 0700 directory."""

    path: Path

    def load(self) -> KeyRing:
        meta_path = self.path / "ring.json"
        if not meta_path.is_file():
            raise NotFoundError("no key ring here (create one with `cyxwiz token init`)", path=str(self.path))
        data = _parse_json(meta_path.read_text(), str(meta_path))
        if data.get("pkcs11") is not None:
            from cyxwiz.tokens.hsm_ring import load_token_held

            return KeyRing._from_meta(data, load_token_held(data, source=str(meta_path)))
        keys = []
        for record in data.get("keys", []):
            kid = str(record.get("kid", ""))
            # kid comes from our own file, but is still checked before it becomes part of a path.
            if not valid_kid(kid):
                raise ConfigError("bad kid in ring.json", field="kid", path=str(meta_path), rule="B4")
            keys.append(_key_from_record(record, secret=read_private(self.path / f"{kid}.key")))
        return KeyRing._from_meta(data, keys)

    def save(self, ring: KeyRing) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if ring.pkcs11 is not None:
            from cyxwiz.tokens.hsm_ring import save_token_held

            save_token_held(self.path / "ring.json", ring)
            return
        keys = ring.all_keys()
        for key in keys:
            secret = key.private_pem() if key.alg == "EdDSA" else b64url(key.secret or b"").encode()
            target = self.path / f"{key.kid}.key"
            if not target.exists():
                write_private(target, secret)
        meta = {**ring._meta(), "keys": [_key_record(k, inline=False) for k in keys]}
        write_private(self.path / "ring.json", json.dumps(meta, indent=2).encode())
        live = {f"{k.kid}.key" for k in keys}
        for old in self.path.glob("*.key"):
            if old.name not in live:
                old.unlink()  # a pruned key's private part is destroyed, not left behind


@dataclass(frozen=True)
class SecretKeyRingStore:
    store: SecretStore
    name: str = "cyxwiz-token-keyring"

    def load(self) -> KeyRing:
        text = self.store.get_secret(self.name)
        if text is None:
            raise NotFoundError("no key ring in the secret store", field=self.name, rule="B4")
        return KeyRing.from_secret_json(text)

    def save(self, ring: KeyRing) -> None:
        self.store.set_secret(self.name, ring.to_secret_json())


@dataclass(frozen=True)
class RotationReport:
    rotated: bool
    signing_kid: str
    dropped: tuple[str, ...]


def rotate_if_due(store: KeyRingStore, *, now: datetime | None = None, force: bool = False) -> RotationReport:
    """The scheduled flow's body (B4): rotate when the signing key is older than the period, prune, save."""
    now = now or utcnow()
    ring = store.load()
    rotated = force or ring.rotation_due(now=now)
    if rotated:
        ring.rotate(now=now)
    dropped = ring.prune(now=now)
    if rotated or dropped:
        store.save(ring)
    return RotationReport(rotated=rotated, signing_kid=ring.signing_key.kid, dropped=tuple(dropped))


__all__ = [
    "DirKeyRingStore",
    "KeyRing",
    "KeyRingStore",
    "MemorySecretStore",
    "RotationReport",
    "SecretKeyRingStore",
    "SecretStore",
    "rotate_if_due",
    "utcnow",
]
