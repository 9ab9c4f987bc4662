"""Where a long-lived Ed25519 signing key lives: a sealed file or a PKCS#11 token (SPEC A7, B4, F1, H4).

Every long-lived key (root and issuing CA, token signing key, audit checkpoint key, escrow authority keys)
is used through one small interface, :class:`KeySource`: ``sign(data)``, ``public_key``, ``kind`` and
``uri``. Two implementations exist: :class:`FileKeySource` (a 0600 PKCS#8 PEM file, today's behaviour)
and :class:`~cyxwiz.keys.pkcs11.Pkcs11KeySource` (a key generated inside an HSM that never leaves it).

Code that wants a ``cryptography`` private key object (certificate and CRL builders, PyJWT) gets one from
:func:`as_private_key`: an ``Ed25519PrivateKey`` whose ``sign`` is the source's and whose serialisation is
refused. ``cryptography``'s X.509 builders sign by calling the key object's ``sign`` method, so certificates
and CRLs signed in the HSM come out of the ordinary builder; :func:`checked_signature` re-verifies each
signature against the source's public key, so a token that signs with another key is caught at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.errors import PKIError

KeyKind = Literal["file", "pkcs11"]


class KeySourceError(PKIError):
    """A key source could not be opened or refused an operation (wrong PIN, missing object, ...)."""

    code = "key-source"


class NonExportableKeyError(KeySourceError):
    """Someone asked for the private bytes of a key that must never leave its token."""

    code = "key-not-exportable"


@runtime_checkable
class KeySource(Protocol):
    """An Ed25519 signing key, wherever it is kept."""

    @property
    def kind(self) -> KeyKind: ...

    @property
    def uri(self) -> str:
        """Where the key is, for logs and config: a path or a ``pkcs11:`` URI, never a secret."""
        ...

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data`` (pure EdDSA, RFC 8032)."""
        ...


def public_raw(source: KeySource) -> bytes:
    return source.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def checked_signature(source: KeySource, data: bytes) -> bytes:
    """Sign and verify the result with the source's public key (a misconfigured token is caught here)."""
    signature = source.sign(data)
    try:
        source.public_key.verify(signature, data)
    except InvalidSignature:
        raise KeySourceError(
            "the key source returned a signature its public key does not verify", path=source.uri, rule="A7"
        ) from None
    return signature


class FileKeySource:
    """A sealed 0600 PKCS#8 PEM Ed25519 key file (the default for development and the embedded stack)."""

    def __init__(self, *, key: ed25519.Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = key
        self._public = key.public_key()
        self._path = path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, passphrase: bytes | None = None) -> FileKeySource:
        from cyxwiz.pki.keys import load_private_key

        return cls(key=load_private_key(path, passphrase=passphrase), path=Path(path))

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, passphrase: bytes | None = None, overwrite: bool = False
    ) -> FileKeySource:
        """A fresh key written 0600 (atomically; an existing file is refused unless ``overwrite``)."""
        from cyxwiz.pki.keys import generate_ed25519, write_private_key

        key = generate_ed25519()
        write_private_key(path, key, overwrite=overwrite, passphrase=passphrase)
        return cls(key=key, path=Path(path))

    @property
    def kind(self) -> KeyKind:
        return "file"

    @property
    def uri(self) -> str:
        return str(self._path) if self._path is not None else "memory:"

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @property
    def private_key(self) -> ed25519.Ed25519PrivateKey:
        """The key object itself: a file key is exportable by nature (it *is* a file)."""
        return self._key

    def __repr__(self) -> str:
        return f"FileKeySource({self.uri!r})"


class SourcePrivateKey(ed25519.Ed25519PrivateKey):
    """An ``Ed25519PrivateKey`` that signs through a :class:`KeySource` and cannot be serialised.

    Handed to ``cryptography``'s certificate/CRL/CSR builders and to PyJWT, which only ever call ``sign``
    and ``public_key``.
    """

    def __init__(self, source: KeySource) -> None:
        self.source = source

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.source.public_key

    def sign(self, data: Any) -> bytes:
        return self.source.sign(bytes(data))

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise NonExportableKeyError(
            "this key lives in a key source and cannot be serialised", path=self.source.uri, rule="A7"
        )

    def private_bytes_raw(self) -> bytes:
        return self.private_bytes()

    def __copy__(self) -> SourcePrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> SourcePrivateKey:
        return self

    def __repr__(self) -> str:
        return f"SourcePrivateKey({self.source.uri!r})"


def as_private_key(source: KeySource) -> ed25519.Ed25519PrivateKey:
    """A ``cryptography`` key object for ``source`` (the real one for file keys, an adapter otherwise)."""
    if isinstance(source, FileKeySource):
        return source.private_key
    return SourcePrivateKey(source)


def source_of(key: ed25519.Ed25519PrivateKey) -> KeySource:
    """The inverse of :func:`as_private_key`."""
    if isinstance(key, SourcePrivateKey):
        return key.source
    return FileKeySource(key=key)


def open_key_source(
    ref: str | os.PathLike[str], *, passphrase: bytes | None = None, env: dict[str, str] | None = None
) -> KeySource:
    """A ``pkcs11:`` URI opens the token's key; anything else is the path of a PKCS#8 key file."""
    from cyxwiz.keys.uri import is_pkcs11_uri

    if is_pkcs11_uri(ref):
        from cyxwiz.keys.pkcs11 import Pkcs11KeySource

        return Pkcs11KeySource.open(str(ref), env=env)
    return FileKeySource.load(ref, passphrase=passphrase)


def create_key_source(
    ref: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    overwrite: bool = False,
    env: dict[str, str] | None = None,
) -> KeySource:
    """A new key: generated inside the token for a ``pkcs11:`` URI, else written to a 0600 file."""
    from cyxwiz.keys.uri import is_pkcs11_uri

    if is_pkcs11_uri(ref):
        from cyxwiz.keys.pkcs11 import Pkcs11KeySource

        return Pkcs11KeySource.generate(str(ref), env=env, overwrite=overwrite)
    return FileKeySource.create(ref, passphrase=passphrase, overwrite=overwrite)
