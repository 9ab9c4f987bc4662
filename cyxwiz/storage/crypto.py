"""Envelope encryption for stored objects (SPEC D2).

Every encrypted object gets its own random 256-bit data key. The data key encrypts the body with
AES-256-GCM in fixed-size chunks (the STREAM construction: nonce = 7-byte random prefix || 32-bit chunk
counter || last-chunk flag), so objects of any size stream through in constant memory and truncation,
reordering or chunk swapping all fail authentication. The data key is wrapped with AES-256-GCM under the
store's master key, with the object key as associated data: a body copied under another key, or read with
another master key, does not decrypt. The wrapped key travels in the object's own header, so the archive
needs nothing but the master key to be read back.

Body layout (all integers big-endian)::

    magic "CYXWZE01" | key_id (8) | wrap_nonce (12) | wrapped data key (48) | nonce_prefix (7) | chunk (4)
    then ceil(n / chunk) (at least one) frames of ciphertext || 16-byte tag

Every frame is authenticated with the whole header plus the object key as associated data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cyxwiz.errors import ConfigError, DecryptionError, KeyPermissionError

MAGIC = b"CYXWZE01"
ALGORITHM = "aes256gcm-stream-v1"
DEFAULT_CHUNK = 1 << 20
TAG_LEN = 16
_HEADER = struct.Struct(">8s8s12s48s7sI")
HEADER_LEN = _HEADER.size
MAX_CHUNK = 64 << 20
MASTER_KEY_ENV = "CYXWIZ_STORE_MASTER_KEY"
MASTER_KEY_FILE_ENV = "CYXWIZ_STORE_MASTER_KEY_FILE"


def _hkdf(key: bytes, label: bytes) -> bytes:
    # HKDF-SHA256 with an empty salt and one output block: enough to separate the MAC key from the KEK.
    prk = hmac.new(b"\0" * 32, key, hashlib.sha256).digest()
    return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()


class MasterKey:
    """The key-encryption key of a store; never printed, logged or written except to a 0600 file."""

    __slots__ = ("_aead", "_key", "_mac_key", "key_id")

    def __init__(self, *, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise ConfigError("master key must be exactly 32 bytes", field="master_key", rule="D2")
        self._key = key
        self._aead = AESGCM(_hkdf(key, b"cyxwiz-store-kek-v1"))
        self._mac_key = _hkdf(key, b"cyxwiz-store-mac-v1")
        #: Public identifier of the key (names which key an object needs; reveals nothing about it).
        self.key_id = _hkdf(key, b"cyxwiz-store-key-id-v1")[:8]

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id.hex()})"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(key=AESGCM.generate_key(bit_length=256))

    @classmethod
    def from_text(cls, text: str, *, field: str = "master_key") -> MasterKey:
        """64 hex digits, or base64/base64url of 32 bytes."""
        text = text.strip()
        raw: bytes | None = None
        if len(text) == 64:
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raw = None
        if raw is None:
            try:
                raw = base64.urlsafe_b64decode(
                    text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
                )
            except ValueError:
                raw = b""
        if len(raw) != 32:
            raise ConfigError(
                "master key must be 32 bytes as 64 hex digits or base64", field=field, rule="D2"
            )
        return cls(key=raw)

    @classmethod
    def from_file(cls, path: Path | str) -> MasterKey:
        """Read a key file; refuses one that group or others could read (the key would be shared)."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError("master key file not found", path=str(path), rule="D2") from None
        if mode & 0o077:
            raise KeyPermissionError(
                f"master key file mode is {mode & 0o777:04o}; it must not be readable by group or others",
                path=str(path),
                rule="D2",
                hint=f"chmod 600 {path}",
            )
        return cls.from_text(path.read_text(encoding="ascii", errors="replace"), field=str(path))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> MasterKey | None:
        """``CYXWIZ_STORE_MASTER_KEY`` (the key) or ``..._FILE`` (a 0600 file holding it); else None."""
        env = os.environ if environ is None else environ
        if env.get(MASTER_KEY_ENV):
            return cls.from_text(env[MASTER_KEY_ENV], field=MASTER_KEY_ENV)
        if env.get(MASTER_KEY_FILE_ENV):
            return cls.from_file(env[MASTER_KEY_FILE_ENV])
        return None

    def write(self, path: Path | str, *, overwrite: bool = False) -> None:
        """Write the key as hex to a new 0600 file (atomic; refuses to replace one unless asked)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConfigError("master key file already exists", path=str(path), rule="D2")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(self._key.hex() + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- primitives used by the store ----------------------------------------------------------------

    def mac(self, message: bytes) -> str:
        return hmac.new(self._mac_key, message, hashlib.sha256).hexdigest()

    def wrap(self, data_key: bytes, *, nonce: bytes, object_key: str) -> bytes:
        return self._aead.encrypt(nonce, data_key, _wrap_aad(object_key))

    def unwrap(self, wrapped: bytes, *, nonce: bytes, object_key: str) -> bytes:
        try:
            return self._aead.decrypt(nonce, wrapped, _wrap_aad(object_key))
        except InvalidTag:
            raise DecryptionError(
                "data key does not unwrap under this master key for this object key "
                "(wrong master key, or a body moved from another object)",
                path=object_key,
                rule="D2",
            ) from None


def _wrap_aad(object_key: str) -> bytes:
    return b"cyxwiz-data-key-v1\0" + object_key.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The random choices for one encrypted object; kept so a second pass re-encrypts identically."""

    data_key: bytes
    wrap_nonce: bytes
    nonce_prefix: bytes
    chunk_size: int = DEFAULT_CHUNK

    @classmethod
    def new(cls, *, chunk_size: int = DEFAULT_CHUNK) -> Envelope:
        if not 1 <= chunk_size <= MAX_CHUNK:
            raise ConfigError("chunk size out of range", field="chunk_size", rule="D2")
        return cls(
            data_key=AESGCM.generate_key(bit_length=256),
            wrap_nonce=os.urandom(12),
            nonce_prefix=os.urandom(7),
            chunk_size=chunk_size,
        )

    def header(self, master: MasterKey, object_key: str) -> bytes:
        wrapped = master.wrap(self.data_key, nonce=self.wrap_nonce, object_key=object_key)
        return _HEADER.pack(
            MAGIC, master.key_id, self.wrap_nonce, wrapped, self.nonce_prefix, self.chunk_size
        )


def encrypted_size(plain_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    frames = max(1, -(-plain_size // chunk_size))
    return HEADER_LEN + plain_size + frames * TAG_LEN


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 1 << 32:
        raise DecryptionError("object has too many chunks", rule="D2")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _read_exact(reader: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        block = reader.read(size)
        if not block:
            break
        parts.append(block)
        size -= len(block)
    return b"".join(parts)


def encrypt_stream(
    reader: BinaryIO, *, master: MasterKey, object_key: str, envelope: Envelope
) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(plaintext, ciphertext)`` pieces: first ``(b"", header)``, then one per chunk.

    Plaintext is yielded alongside so callers can hash both in the same pass.
    """
    header = envelope.header(master, object_key)
    aad = header + object_key.encode("utf-8")
    aead = AESGCM(envelope.data_key)
    yield b"", header
    index = 0
    current = _read_exact(reader, envelope.chunk_size)
    while True:
        following = _read_exact(reader, envelope.chunk_size) if len(current) == envelope.chunk_size else b""
        last = not following
        yield current, aead.encrypt(_nonce(envelope.nonce_prefix, index, last), current, aad)
        if last:
            return
        current = following
        index += 1


def encrypt_bytes(
    data: bytes, *, master: MasterKey, object_key: str, envelope: Envelope | None = None
) -> bytes:
    import io

    env = envelope or Envelope.new()
    return b"".join(
        c for _, c in encrypt_stream(io.BytesIO(data), master=master, object_key=object_key, envelope=env)
    )


class StreamDecryptor:
    """Incremental decryption: ``feed`` stored bytes as they arrive, then ``finish``.

    Authentication failures raise DecryptionError; the caller decides whether the stored bytes were
    altered (an IntegrityError, found by the stored hash) or the key is wrong.
    """

    def __init__(self, *, master: MasterKey, object_key: str) -> None:
        self._master = master
        self._object_key = object_key
        self._buffer = bytearray()
        self._aead: AESGCM | None = None
        self._aad = b""
        self._prefix = b""
        self._frame = 0
        self._index = 0
        self._done = False

    def _parse_header(self) -> None:
        magic, key_id, wrap_nonce, wrapped, prefix, chunk = _HEADER.unpack(bytes(self._buffer[:HEADER_LEN]))
        if magic != MAGIC:
            raise DecryptionError("not a cyxwiz encrypted body (bad magic)", path=self._object_key, rule="D2")
        if not hmac.compare_digest(key_id, self._master.key_id):
            raise DecryptionError(
                f"object was encrypted under master key {key_id.hex()}, this store holds "
                f"{self._master.key_id.hex()}",
                path=self._object_key,
                rule="D2",
            )
        if not 1 <= chunk <= MAX_CHUNK:
            raise DecryptionError("bad chunk size in header", path=self._object_key, rule="D2")
        data_key = self._master.unwrap(wrapped, nonce=wrap_nonce, object_key=self._object_key)
        self._aead = AESGCM(data_key)
        self._aad = bytes(self._buffer[:HEADER_LEN]) + self._object_key.encode("utf-8")
        self._prefix = prefix
        self._frame = chunk + TAG_LEN
        del self._buffer[:HEADER_LEN]

    def _open(self, frame: bytes, *, last: bool) -> bytes:
        assert self._aead is not None
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._index, last), frame, self._aad)
        except InvalidTag:
            raise DecryptionError(
                f"chunk {self._index} fails authentication (altered, reordered or truncated body)",
                path=self._object_key,
                rule="D2",
            ) from None
        self._index += 1
        return plain

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        if self._aead is None:
            if len(self._buffer) < HEADER_LEN:
                return b""
            self._parse_header()
        out: list[bytes] = []
        # Keep at least one whole frame back: only the end of the stream says which frame is last.
        while len(self._buffer) > self._frame:
            out.append(self._open(bytes(self._buffer[: self._frame]), last=False))
            del self._buffer[: self._frame]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        if self._aead is None:
            raise DecryptionError("encrypted body shorter than its header", path=self._object_key, rule="D2")
        if len(self._buffer) < TAG_LEN:
            raise DecryptionError("encrypted body truncated", path=self._object_key, rule="D2")
        return self._open(bytes(self._buffer), last=True)


def decrypt_bytes(data: bytes, *, master: MasterKey, object_key: str) -> bytes:
    dec = StreamDecryptor(master=master, object_key=object_key)
    return dec.feed(data) + dec.finish()


def decrypt_iter(chunks: Iterable[bytes], *, master: MasterKey, object_key: str) -> Iterator[bytes]:
    dec = StreamDecryptor(master=master, object_key=object_key)
    for chunk in chunks:
        out = dec.feed(chunk)
        if out:
            yield out
    yield dec.finish()
