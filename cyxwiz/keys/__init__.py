"""Long-lived signing keys wherever they are kept: sealed files or PKCS#11 tokens (SPEC A7, B4, F1, H4).

:class:`KeySource` is the interface; :func:`open_key_source` / :func:`create_key_source` pick the
implementation from the reference (a ``pkcs11:`` URI or a file path); :func:`as_private_key` adapts a
source to the ``cryptography`` key object the X.509 builders and PyJWT expect.
"""

from __future__ import annotations

from cyxwiz.keys.source import (
    FileKeySource,
    KeyKind,
    KeySource,
    KeySourceError,
    NonExportableKeyError,
    SourcePrivateKey,
    as_private_key,
    checked_signature,
    create_key_source,
    open_key_source,
    public_raw,
    source_of,
)
from cyxwiz.keys.uri import Pkcs11Uri, is_pkcs11_uri

__all__ = [
    "FileKeySource",
    "KeyKind",
    "KeySource",
    "KeySourceError",
    "NonExportableKeyError",
    "Pkcs11Uri",
    "SourcePrivateKey",
    "as_private_key",
    "checked_signature",
    "create_key_source",
    "is_pkcs11_uri",
    "open_key_source",
    "public_raw",
    "source_of",
]
