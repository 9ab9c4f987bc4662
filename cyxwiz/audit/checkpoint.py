"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, Ed25519 (SPEC H4).

A checkpoint commits to the whole log at one size::

    cyxwiz.local/audit                                   origin (also the signing key's name)
    1834                                                 tree size: number of records
    2tR3nNw8Xm2yI2uJgQvYh8M4QzH0s3o4iEo5kq6mOaE=         base64 RFC 6962 root hash
                                                         blank line: end of the note text
    — cyxwiz.local/audit AbCdEf…                         base64(4-byte key ID || Ed25519 signature)

The key ID is ``SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]`` (c2sp.org/signed-note). No
extension lines (the spec discourages them). Verification takes the *pinned* public key only: a note
whose only signatures come from other keys is refused, whatever key it claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cyxwiz.audit.merkle import HASH_SIZE
from cyxwiz.errors import AuditIntegrityError

DEFAULT_ORIGIN = "cyxwiz.local/audit"
ED25519 = b"\x01"
_DASH = "\u2014 "
MAX_NOTE_BYTES = 16 * 1024


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature was checked against the pinned key."""

    origin: str
    size: int
    root: bytes
    note: bytes

    @property
    def root_b64(self) -> str:
        return base64.b64encode(self.root).decode("ascii")


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def note_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519 + _raw(public_key)).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The note verifier key string ``name+hex(keyid)+base64(0x01 || key)`` (as Go's ``note`` prints it)."""
    encoded = base64.b64encode(ED25519 + _raw(public_key)).decode("ascii")
    return f"{name}+{note_key_id(name, public_key).hex()}+{encoded}"


def check_origin(origin: str) -> str:
    if not origin or any(c.isspace() or c == "+" for c in origin) or not origin.isprintable():
        raise AuditIntegrityError(
            "checkpoint origin must be non-empty, without spaces or '+'", field="origin", rule="H4"
        )
    return origin


def body(origin: str, size: int, root: bytes) -> bytes:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n".encode()


def sign_checkpoint(*, origin: str, size: int, root: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signed note for the tree of ``size`` leaves with ``root``."""
    text = body(check_origin(origin), size, root)
    sig = note_key_id(origin, key.public_key()) + key.sign(text)
    return text + b"\n" + f"{_DASH}{origin} {base64.b64encode(sig).decode('ascii')}\n".encode()


#: every control character but the newline (what a note may not carry), searched in C: the writers' checkpoint
#: timer checks the note on disk several times a second in each process
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")


def _fail(reason: str) -> AuditIntegrityError:
    return AuditIntegrityError(reason, field="checkpoint", rule="H4")


def _split(note: bytes) -> tuple[str, list[str], list[str]]:
    """(signed text, its lines, signature lines) of a well-formed signed note."""
    if len(note) > MAX_NOTE_BYTES:
        raise _fail("checkpoint is too large")
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("checkpoint is not UTF-8") from None
    if _CONTROL.search(text):
        raise _fail("checkpoint contains control characters")
    cut = text.rfind("\n\n")
    if cut < 0 or not text.endswith("\n"):
        raise _fail("not a signed note (no blank line before the signatures)")
    signed, sig_lines = text[: cut + 1], text[cut + 2 :].splitlines()
    if not sig_lines:
        raise _fail("checkpoint is not signed")
    return signed, signed.splitlines(), sig_lines


def _parse_body(lines: list[str], origin: str | None) -> tuple[str, int, bytes]:
    if len(lines) < 3 or not all(lines):
        raise _fail("checkpoint needs origin, tree size and root hash lines")
    name, size_text, root_text = lines[0], lines[1], lines[2]
    if origin is not None and name != origin:
        raise _fail(f"checkpoint is for origin {name!r}, expected {origin!r}")
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text[0] == "0"):
        raise _fail("tree size is not a decimal number without leading zeros")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise _fail("root hash is not base64") from None
    if len(root) != HASH_SIZE:
        raise _fail("root hash is not 32 bytes")
    return name, int(size_text), root


def claimed_size(note: bytes) -> int:
    """The tree size a note's second line states, nothing checked (-1 when it states none): what a writer
    compares with its head before anything costlier, never a reason to trust the note."""
    lines = note.split(b"\n", 2)
    try:
        return int(lines[1]) if len(lines) > 2 else -1
    except ValueError:
        return -1


def parse_unverified(note: bytes) -> tuple[str, int, bytes]:
    """(origin, size, root) of a well-formed note, its signature NOT checked: for tooling that then
    checks a proof between two notes; trust needs :func:`verify_checkpoint`."""
    _, lines, _ = _split(note)
    return _parse_body(lines, None)


def verify_checkpoint(note: bytes, *, public_key: Ed25519PublicKey, origin: str | None = None) -> Checkpoint:
    """Parse ``note`` and check its signature by ``public_key``; raise AuditIntegrityError saying why not.

    Signatures by other keys are ignored (c2sp.org/signed-note); the note needs one by the pinned key.
    """
    signed, lines, sig_lines = _split(note)
    name, size, root = _parse_body(lines, origin)
    wanted = note_key_id(name, public_key)
    matched = False
    for line in sig_lines:
        if not line.startswith(_DASH):
            raise _fail("malformed signature line")
        key_name, _, b64 = line[len(_DASH) :].rpartition(" ")
        try:
            sig = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise _fail("signature is not base64") from None
        if key_name != name or sig[:4] != wanted:
            continue  # another key's signature (a witness, say)
        try:
            public_key.verify(sig[4:], signed.encode("utf-8"))
        except InvalidSignature:
            raise _fail(
                "checkpoint signature does not verify (edited, or forged with the key's id)"
            ) from None
        matched = True
    if not matched:
        raise _fail("checkpoint is not signed by the pinned audit key (signed by another key)")
    return Checkpoint(origin=name, size=size, root=root, note=note)
