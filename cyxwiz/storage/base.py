"""Checks shared by every backend: hashing, tags, envelope encryption, manifests (SPEC D2, D3).

A backend only moves bytes and a flat ``str -> str`` metadata map (``_write``/``_read``/``_head``/
``_keys``/``_remove``); everything that decides whether an object is trustworthy lives here and in the
two modules it delegates to (:mod:`cyxwiz.storage.streams`: reading back and hash checks;
:mod:`cyxwiz.storage.manifests`: per-job manifests), so the local directory store and S3 refuse exactly
the same things.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import io
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from cyxwiz.errors import ConfigError, DecryptionError, IntegrityError, NotFoundError, ValidationError
from cyxwiz.storage import layout
from cyxwiz.storage.crypto import (
    ALGORITHM,
    DEFAULT_CHUNK,
    Envelope,
    MasterKey,
    StreamDecryptor,
    encrypt_stream,
)
from cyxwiz.storage.manifests import Entries, parse_manifest, updated_manifest, verify_against_manifests
from cyxwiz.storage.model import ENC_NONE, ObjectInfo, Progress, VerifyReport
from cyxwiz.storage.streams import READ_BLOCK, check_plain, check_stored, verified_plaintext

__all__ = ["INLINE_LIMIT", "READ_BLOCK", "BaseObjectStore"]

#: Bodies up to this size are handled in memory in one request; larger ones stream.
INLINE_LIMIT = 8 << 20


class BaseObjectStore(ABC):
    """Everything but byte transport. Subclasses implement the five ``_`` methods below."""

    def __init__(
        self,
        *,
        master_key: MasterKey | None,
        chunk_size: int = DEFAULT_CHUNK,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        self.master_key = master_key
        self.chunk_size = chunk_size
        self.inline_limit = inline_limit
        #: Where encrypted uploads spool their ciphertext (None: the system temporary directory).
        self.spool_dir: str | None = None
        self._manifest_lock = threading.Lock()

    # -- transport (backend) -------------------------------------------------------------------------

    @abstractmethod
    def _write(self, info: ObjectInfo, chunks: Iterator[bytes], *, progress: Progress | None) -> None:
        """Store ``chunks`` (``info.stored_size`` bytes) under ``info.key`` with ``info.to_metadata()``.

        If the iterator raises, nothing may be left under the key (abort the upload, drop the temp file).
        """

    @abstractmethod
    def _read(self, key: str) -> tuple[dict[str, str], _dt.datetime | None, Iterator[bytes]]:
        """Metadata, modification time and the stored bytes; NotFoundError when absent."""

    @abstractmethod
    def _head(self, key: str) -> tuple[dict[str, str], _dt.datetime | None]: ...

    @abstractmethod
    def _keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (sorted)."""

    @abstractmethod
    def _remove(self, key: str) -> None: ...

    # -- writing -------------------------------------------------------------------------------------

    def _master_for_encrypt(self, key: str) -> MasterKey:
        if self.master_key is None:
            raise ConfigError(
                "client-side encryption needs a master key",
                field="master_key",
                path=key,
                rule="D2",
                hint="set CYXWIZ_STORE_MASTER_KEY or CYXWIZ_STORE_MASTER_KEY_FILE",
            )
        return self.master_key

    def _check_writable(self, key: str) -> None:
        layout.validate_key(key)
        if layout.is_manifest(key):
            raise ValidationError(
                "manifests are written by the store itself", field="key", path=key, rule="D3"
            )

    def put_bytes(self, key: str, data: bytes, *, encrypt: bool = False) -> ObjectInfo:
        self._check_writable(key)
        info, stored = self._seal_bytes(key, data, encrypt=encrypt)
        self._write(info, iter((stored,)), progress=None)
        self._manifest_update(info)
        return info

    def _seal_bytes(self, key: str, data: bytes, *, encrypt: bool) -> tuple[ObjectInfo, bytes]:
        plain_sha = hashlib.sha256(data).hexdigest()
        stored, encryption = data, ENC_NONE
        if encrypt:
            master = self._master_for_encrypt(key)
            env = Envelope.new(chunk_size=self.chunk_size)
            stored = b"".join(
                c for _, c in encrypt_stream(io.BytesIO(data), master=master, object_key=key, envelope=env)
            )
            encryption = ALGORITHM
        stored_sha = plain_sha if stored is data else hashlib.sha256(stored).hexdigest()
        info = ObjectInfo(
            key=key,
            sha256=plain_sha,
            size=len(data),
            stored_sha256=stored_sha,
            stored_size=len(stored),
            encryption=encryption,
        ).signed(self.master_key)
        return info, stored

    def put_file(
        self, key: str, path: Path, *, encrypt: bool = False, progress: Progress | None = None
    ) -> ObjectInfo:
        """Upload a file of any size in constant memory.

        Two passes: the first computes the hashes that go into the metadata (S3 wants metadata before the
        first byte), the second uploads, re-hashing; a file that changed in between fails with
        IntegrityError and leaves nothing behind. Encryption reuses one Envelope so both passes agree.
        """
        self._check_writable(key)
        path = Path(path)
        size = path.stat().st_size
        if size <= self.inline_limit:
            info = self.put_bytes(key, path.read_bytes(), encrypt=encrypt)
            if progress is not None:
                progress(info.stored_size, info.stored_size)
            return info
        envelope = Envelope.new(chunk_size=self.chunk_size) if encrypt else None
        master = self._master_for_encrypt(key) if encrypt else None
        plain, stored = hashlib.sha256(), hashlib.sha256()
        plain_size = stored_size = 0
        # Ciphertext is spooled to an anonymous temporary file (unlinked, never visible by name) so
        # that the upload pass does not encrypt and hash everything a second time.
        spool = tempfile.TemporaryFile(dir=self.spool_dir) if encrypt else None  # noqa: SIM115
        try:
            # The plaintext is hashed on a helper thread, beside encryption and the ciphertext hash here
            # (hashlib and AES-GCM release the GIL on large buffers); one piece in flight keeps the order.
            with path.open("rb") as fh, ThreadPoolExecutor(1, "cyxwiz-store-hash") as hasher:
                pending: Future[None] | None = None
                for p, c in self._pieces(fh, key, master, envelope):
                    if spool is not None:  # unencrypted: plain and stored are the same bytes, hash once
                        if pending is not None:
                            pending.result()
                        pending = hasher.submit(plain.update, p)
                        plain_size += len(p)
                        spool.write(c)
                    stored.update(c)
                    stored_size += len(c)
                if pending is not None:
                    pending.result()
            if spool is None:
                plain, plain_size = stored, stored_size
            info = ObjectInfo(
                key=key,
                sha256=plain.hexdigest(),
                size=plain_size,
                stored_sha256=stored.hexdigest(),
                stored_size=stored_size,
                encryption=ALGORITHM if encrypt else ENC_NONE,
            ).signed(self.master_key)
            if spool is not None:
                spool.seek(0)
                body: Iterator[bytes] = iter(lambda: spool.read(READ_BLOCK), b"")
            else:
                body = self._second_pass(path, info)
            self._write(info, body, progress=progress)
        finally:
            if spool is not None:
                spool.close()
        self._manifest_update(info)
        return info

    def _pieces(
        self, fh: BinaryIO, key: str, master: MasterKey | None, envelope: Envelope | None
    ) -> Iterator[tuple[bytes, bytes]]:
        if envelope is None or master is None:
            while block := fh.read(READ_BLOCK):
                yield block, block
            return
        yield from encrypt_stream(fh, master=master, object_key=key, envelope=envelope)

    def _second_pass(self, path: Path, info: ObjectInfo) -> Iterator[bytes]:
        sha, size = hashlib.sha256(), 0
        with path.open("rb") as fh:
            while block := fh.read(READ_BLOCK):
                sha.update(block)
                size += len(block)
                if size > info.stored_size:
                    break
                yield block
        if size != info.stored_size or not hmac.compare_digest(sha.hexdigest(), info.stored_sha256):
            raise IntegrityError("file changed while it was being uploaded", path=str(path), rule="D3")

    # -- reading -------------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        """Metadata only (tag checked); the body is checked by get_* and verify."""
        layout.validate_key(key)
        meta, modified = self._head(key)
        info = ObjectInfo.from_metadata(key, meta, modified=modified)
        info.check_tag(self.master_key)
        return info

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if prefix:
            layout.validate_key(prefix.rstrip("/"), field="prefix")
        return [self.head(k) for k in self._keys(prefix)]

    def _open_checked(self, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        layout.validate_key(key)
        meta, modified, chunks = self._read(key)
        info = ObjectInfo.from_metadata(key, meta, modified=modified)
        info.check_tag(self.master_key)
        if info.encrypted and self.master_key is None:
            raise DecryptionError("object is encrypted and this store has no master key", path=key, rule="D2")
        return info, chunks

    def _plaintext(
        self, info: ObjectInfo, chunks: Iterator[bytes], progress: Progress | None
    ) -> Iterator[bytes]:
        return verified_plaintext(info, chunks, master_key=self.master_key, progress=progress)

    def get_bytes(self, key: str) -> bytes:
        info, chunks = self._open_checked(key)
        data = b"".join(chunks)
        check_stored(info, len(data), hashlib.sha256(data).hexdigest())
        if info.encrypted:
            assert self.master_key is not None
            dec = StreamDecryptor(master=self.master_key, object_key=key)
            data = dec.feed(data) + dec.finish()
            check_plain(info, len(data), hashlib.sha256(data).hexdigest())
        return data

    def get_file(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        """Download to ``dest`` (mode 0600) only once every check passed; nothing is left otherwise."""
        info, chunks = self._open_checked(key)
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                for block in self._plaintext(info, chunks, progress):
                    fh.write(block)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return info

    def open_verified(self, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        """Metadata (tag checked) and an iterator of plaintext that raises before its end if the stored
        bytes fail their hash; callers streaming to a peer must treat that exception as "abort"."""
        info, chunks = self._open_checked(key)
        return info, self._plaintext(info, chunks, None)

    def check(self, key: str) -> ObjectInfo:
        """Read and verify an object end to end without keeping it."""
        info, chunks = self._open_checked(key)
        for _ in self._plaintext(info, chunks, None):
            pass
        return info

    def delete(self, key: str) -> None:
        self._check_writable(key)
        self._remove(key)
        self._manifest_update(None, remove=key)

    def adopt(self, key: str) -> ObjectInfo:
        """Verify an object written through a presigned URL and enter it in its manifest."""
        info = self.check(key)
        self._manifest_update(info)
        return info

    # -- manifests -----------------------------------------------------------------------------------

    def read_manifest(self, manifest_key: str) -> Entries:
        """Entries of a manifest after checking its tag; {} when there is none yet."""
        try:
            raw = self.get_bytes(manifest_key)
        except NotFoundError:
            return {}
        return parse_manifest(raw, manifest_key=manifest_key, master_key=self.master_key)

    def _manifest_update(self, info: ObjectInfo | None, *, remove: str | None = None) -> None:
        key = info.key if info is not None else remove
        assert key is not None
        manifest_key = layout.manifest_for(key)
        if manifest_key is None or manifest_key == key:
            return
        # One writer per job (the control plane); the lock covers threads of that writer.
        with self._manifest_lock:
            objects = self.read_manifest(manifest_key)
            body = updated_manifest(objects, key=key, info=info, master_key=self.master_key)
            minfo, stored = self._seal_bytes(manifest_key, body, encrypt=False)
            self._write(minfo, iter((stored,)), progress=None)

    # -- verification --------------------------------------------------------------------------------

    def verify(self, prefix: str) -> VerifyReport:
        """Re-hash (and decrypt) every object under ``prefix`` and compare with the manifests."""
        if prefix:
            layout.validate_key(prefix.rstrip("/"), field="prefix")
        return verify_against_manifests(
            prefix, keys=self._keys(prefix), check=self.check, read_manifest=self.read_manifest
        )
