"""Where a CA's key is, and checking what it signed (SPEC A7, A1).

A CA directory holds its key as ``ca-key.pem`` (0600 PKCS#8) or, when the key lives in a PKCS#11 token, as
``ca-key.uri``: one line with the key's ``pkcs11:`` URI (it names a PIN source, never a PIN). Every
certificate a CA issues is verified against the CA's public key before it is written or handed out, so a
token signing with another key (or returning garbage) is caught at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from cyxwiz.errors import CertificateError
from cyxwiz.keys import is_pkcs11_uri
from cyxwiz.pki._files import PUBLIC_MODE, write_atomic

KEY_FILE = "ca-key.pem"
#: Instead of KEY_FILE: one line naming the CA key inside a PKCS#11 token (``pkcs11:...``, no PIN).
KEY_REF_FILE = "ca-key.uri"

__all__ = ["KEY_REF_FILE", "key_reference", "write_key_reference"]


def key_reference(directory: Path) -> Path | str:
    """The CA key of a CA directory: ``ca-key.pem``, or the ``pkcs11:`` URI written in ``ca-key.uri``."""
    ref_file = directory / KEY_REF_FILE
    if not (directory / KEY_FILE).exists() and ref_file.is_file():
        uri = ref_file.read_text(encoding="utf-8").strip()
        if not is_pkcs11_uri(uri):
            raise CertificateError("key reference is not a pkcs11: URI", path=str(ref_file), rule="A7")
        return uri
    return directory / KEY_FILE


def write_key_reference(directory: Path, uri: str) -> None:
    """Record where a CA directory's key lives in a token (the URI names a PIN source, never a PIN)."""
    write_atomic(directory / KEY_REF_FILE, uri.encode() + b"\n", mode=PUBLIC_MODE, overwrite=True)


def key_ref(key: str | os.PathLike[str]) -> Path | str:
    """A key file stays a Path; a ``pkcs11:`` URI stays text (a Path would fold its '//')."""
    return str(key) if is_pkcs11_uri(key) else Path(key)


def checked_certificate(cert: x509.Certificate, issuer_key: PublicKeyTypes) -> x509.Certificate:
    """Refuse a certificate whose signature its issuer's key does not verify (a token signing with the wrong
    key, or a corrupted signature) before it is written or handed out."""
    try:
        assert isinstance(issuer_key, ed25519.Ed25519PublicKey)
        issuer_key.verify(cert.signature, cert.tbs_certificate_bytes)
    except (InvalidSignature, AssertionError):
        raise CertificateError("the CA key produced a signature that does not verify", rule="A7") from None
    return cert
