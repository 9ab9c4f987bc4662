"""Signed daily digests (SPEC H4), in the manner of CloudTrail digest files.

When a day is closed, a digest records the SHA-256 of the day's (uncompressed) file, its record count,
first/last sequence numbers and the hash of its last record, the Merkle tree size and root at the day's
end (a checkpoint), plus the SHA-256 of the previous day's digest file and that day's date. It is always
signed with Ed25519 over its canonical JSON, and checked only against a pinned public key (never one the
digest could carry). So an edit anywhere in a closed day changes the file hash, and deleting a whole day
(file and digest) breaks the digest chain and names the missing day.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cyxwiz.audit.reader import split_lines
from cyxwiz.audit.records import RecordFormatError, parse_line
from cyxwiz.errors import KeyFormatError, KeyTypeError, NotFoundError
from cyxwiz.shared_dir import file_mode

DIGEST_VERSION = 1


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def build_digest(
    *,
    day: date,
    file_name: str,
    data: bytes,
    previous: tuple[date, bytes] | None,
    signing_key: Ed25519PrivateKey,
    created_at: datetime,
    root: bytes | None = None,
) -> bytes:
    """The digest file content for a closed day. ``previous`` = (day, digest file bytes) before it."""
    records = [rec for rec in _records(data)]
    body: dict[str, Any] = {
        "v": DIGEST_VERSION,
        "day": day.isoformat(),
        "file": file_name,
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "file_bytes": len(data),
        "lines": sum(1 for _ in split_lines(data)),
        "records": len(records),
        "first_seq": records[0][0] if records else None,
        "last_seq": records[-1][0] if records else None,
        "first_prev": records[0][1] if records else None,
        "last_hash": records[-1][2] if records else None,
        "previous_day": previous[0].isoformat() if previous else None,
        "previous_digest_sha256": hashlib.sha256(previous[1]).hexdigest() if previous else None,
        "created_at": created_at.astimezone(UTC).isoformat(),
        "tree_size": records[-1][0] if records and root is not None else None,
        "root": base64.b64encode(root).decode("ascii") if records and root is not None else None,
        "key_id": key_id(signing_key.public_key()),
    }
    body["signature"] = sign_json(body, signing_key)
    return json.dumps(body, sort_keys=True, indent=1).encode("ascii") + b"\n"


def _records(data: bytes) -> list[tuple[int, str, str]]:
    out = []
    for _, raw, _ in split_lines(data):
        try:
            rec = parse_line(raw)
        except RecordFormatError:
            continue
        out.append((rec.seq, rec.prev, rec.hash))
    return out


def sign_json(body: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.sign(canonical(body))).decode("ascii")


def check_signature(digest: dict[str, Any], *, trusted: Ed25519PublicKey, what: str = "digest") -> str | None:
    """None when the signature of a signed JSON document (digest, prune marker) holds by the pinned
    ``trusted`` key, else why not. Whatever key the document names, only ``trusted`` is tried."""
    signature = digest.get("signature")
    if not isinstance(signature, str):
        return f"{what} is not signed"
    body = {k: v for k, v in digest.items() if k != "signature"}
    if digest.get("key_id") != key_id(trusted):
        return f"{what} was signed by another key (key_id differs from the pinned key)"
    try:
        trusted.verify(base64.b64decode(signature, validate=True), canonical(body))
    except InvalidSignature:
        return f"{what} signature does not verify"
    except ValueError:
        return f"{what} signature is malformed"
    return None


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """An Ed25519 PKCS#8 PEM private key, refused when group/other can read it (A2, A4); or, given a
    ``pkcs11:`` URI, the key in a PKCS#11 token, signing there (A7)."""
    from cyxwiz.keys import as_private_key, is_pkcs11_uri, open_key_source
    from cyxwiz.pki.keys import load_private_key

    if is_pkcs11_uri(str(path)):
        return as_private_key(open_key_source(str(path)))
    return load_private_key(path)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM public key, X.509 certificate or (0600) private key file."""
    from cryptography import x509

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError("public key file does not exist", path=str(path)) from None
    key: object
    try:
        if b"BEGIN CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"PRIVATE KEY" in data:
            key = load_signing_key(path).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFormatError(f"cannot load public key: {exc}", path=str(path)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyTypeError("audit digests are verified with Ed25519 keys only", path=str(path), rule="A2")
    return key


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, file_mode(path.parent))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
