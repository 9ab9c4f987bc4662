"""Ed25519 private keys in PKCS#8 PEM files (SPEC A2, A4).

Only one key type (Ed25519) and one file format (PKCS#8 PEM, optionally passphrase-encrypted) exist here.
Everything else is refused with a typed error naming the file, the rule and — for format errors — the
``openssl pkcs8`` conversion from the Hypha troubleshooting section.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from cyxwiz.errors import KeyFormatError, KeyPermissionError, KeyTypeError
from cyxwiz.pki._files import KEY_MODE, read_bytes, write_atomic

#: The conversion Hypha's troubleshooting section gives for traditional-format keys.
CONVERT_HINT = "convert it: openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.pkcs8.pem"
_ED25519_HINT = "generate an Ed25519 key: openssl genpkey -algorithm ed25519 -out key.pem"

#: PEM labels of formats we recognise only to refuse them precisely.
_TRADITIONAL_LABELS = {
    b"-----BEGIN RSA PRIVATE KEY-----": "traditional (PKCS#1) RSA",
    b"-----BEGIN EC PRIVATE KEY-----": "traditional (SEC1) EC",
    b"-----BEGIN DSA PRIVATE KEY-----": "traditional DSA",
    b"-----BEGIN OPENSSH PRIVATE KEY-----": "OpenSSH",
}
_PKCS8 = b"-----BEGIN PRIVATE KEY-----"
_PKCS8_ENCRYPTED = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def generate_ed25519() -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return ed25519.Ed25519PrivateKey.generate()


def key_algorithm_name(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """Human name of a key's algorithm, for error messages."""
    name = type(key).__name__.removeprefix("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return {"EC": "ECDSA", "EllipticCurve": "ECDSA"}.get(name, name) or "unknown"


def require_ed25519_public(key: PublicKeyTypes, *, path: str | None = None) -> ed25519.Ed25519PublicKey:
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyTypeError(
            f"{key_algorithm_name(key)} key refused: only Ed25519 keys are allowed",
            path=path,
            rule="A2",
            hint=_ED25519_HINT,
        )
    return key


def private_key_pem(key: ed25519.Ed25519PrivateKey, *, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM bytes of ``key``, encrypted with the best available scheme when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def write_private_key(
    path: str | os.PathLike[str],
    key: ed25519.Ed25519PrivateKey,
    *,
    overwrite: bool = False,
    passphrase: bytes | None = None,
) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600 from the first byte, atomically (A4).

    Refuses to replace an existing file unless ``overwrite=True`` (ConflictError).
    """
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyTypeError("only Ed25519 keys can be written", path=str(path), rule="A2")
    write_atomic(path, private_key_pem(key, passphrase=passphrase), mode=KEY_MODE, overwrite=overwrite)


def check_key_permissions(path: str | os.PathLike[str]) -> None:
    """Refuse a key file readable (or writable) by group or others (A4)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KeyFormatError("private key file not found", path=str(path)) from None
    if not stat.S_ISREG(mode):
        raise KeyFormatError("private key path is not a regular file", path=str(path))
    if mode & 0o077:
        raise KeyPermissionError(
            f"private key file has mode {stat.S_IMODE(mode):04o}; group/others must have no access",
            path=str(path),
            rule="A4",
            hint=f"chmod 600 {path}",
        )


def parse_private_key(
    data: bytes, *, path: str | None = None, passphrase: bytes | None = None
) -> ed25519.Ed25519PrivateKey:
    """Parse PKCS#8 PEM bytes into an Ed25519 key, refusing every other format and key type."""
    stripped = data.lstrip()
    for label, kind in _TRADITIONAL_LABELS.items():
        if stripped.startswith(label):
            raise KeyFormatError(
                f"{kind} private key format refused: only PKCS#8 PEM is accepted",
                path=path,
                rule="A2",
                hint=CONVERT_HINT,
            )
    encrypted = stripped.startswith(_PKCS8_ENCRYPTED)
    if not (encrypted or stripped.startswith(_PKCS8)):
        raise KeyFormatError(
            "not a PKCS#8 PEM private key (expected '-----BEGIN PRIVATE KEY-----')",
            path=path,
            rule="A2",
            hint=CONVERT_HINT,
        )
    if encrypted and not passphrase:
        raise KeyFormatError(
            "private key is passphrase-encrypted and no passphrase was given",
            path=path,
            field="passphrase",
            rule="A2",
            hint="pass --passphrase-file or set CYXWIZ_CA_PASSPHRASE",
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as exc:
        text = str(exc).lower()
        if encrypted and ("password" in text or "decrypt" in text or "bad" in text):
            raise KeyFormatError(
                "cannot decrypt the private key: wrong passphrase", path=path, field="passphrase", rule="A2"
            ) from None
        raise KeyFormatError(
            "private key PEM is corrupt or unreadable", path=path, rule="A2", hint=CONVERT_HINT
        ) from None
    except TypeError:
        raise KeyFormatError("private key passphrase problem", path=path, field="passphrase") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm etc. for odd keys
        raise KeyFormatError("private key could not be parsed", path=path, rule="A2") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyTypeError(
            f"{key_algorithm_name(key)} private key refused: only Ed25519 keys are allowed",
            path=path,
            rule="A2",
            hint=_ED25519_HINT,
        )
    return key


def load_private_key(
    path: str | os.PathLike[str], *, passphrase: bytes | None = None
) -> ed25519.Ed25519PrivateKey:
    """Load an Ed25519 PKCS#8 PEM key file.

    Raises KeyPermissionError (group/other access), KeyFormatError (traditional/OpenSSH/garbage/wrong
    passphrase, with the conversion hint), KeyTypeError (RSA, ECDSA, ...).
    """
    check_key_permissions(path)
    data = read_bytes(path, what="private key")
    return parse_private_key(data, path=str(Path(path)), passphrase=passphrase)


def public_key_raw(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
