"""Checks shared by every backend: hashing, tags, envelope encryption, manifests (SPEC D2, D3).

A backend only moves bytes and a flat ``str -> str`` metadata map (``_write``/``_read``/``_head``/
``_keys``/``_remove``); everything that decides whether an object is trustworthy lives here, so the local
directory store and S3 refuse exactly the same things.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import io
import json
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from queue import Full, Queue
from typing import BinaryIO

from cyxwiz.errors import (
    ConfigError,
    CyxwizError,
    DecryptionError,
    IntegrityError,
    NotFoundError,
    ValidationError,
)
from cyxwiz.storage import layout
from cyxwiz.storage.crypto import (
    ALGORITHM,
    DEFAULT_CHUNK,
    Envelope,
    MasterKey,
    StreamDecryptor,
    encrypt_stream,
)
from cyxwiz.storage.model import ENC_NONE, ObjectInfo, Problem, Progress, VerifyReport

#: Bodies up to this size are handled in memory in one request; larger ones stream.
INLINE_LIMIT = 8 << 20
READ_BLOCK = 1 << 20


def prefetch(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """Pull ``chunks`` on a helper thread so network reads overlap hashing and decryption here."""
    queue: Queue[tuple[bytes | None, BaseException | None]] = Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        queue.put((chunk, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((None, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            queue.put((None, exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # release the file handle / HTTP connection even when the consumer stopped early

    thread = threading.Thread(target=pump, name="cyxwiz-store-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            chunk, error = queue.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()


class _HashingReader:
    """Hashes stored chunks as they pass (so a failure can still be classified).

    Readers wrap it in :func:`prefetch`, so the hashing runs on the prefetch thread, beside decryption and
    plaintext hashing on the caller's (hashlib releases the GIL on large buffers).
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.sha = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.sha.update(chunk)
            self.size += len(chunk)
            yield chunk


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

    @staticmethod
    def _check_stored(info: ObjectInfo, size: int, sha: str) -> None:
        if size != info.stored_size or not hmac.compare_digest(sha, info.stored_sha256):
            raise IntegrityError(
                f"stored bytes do not match their SHA-256 (expected {info.stored_sha256[:16]}…, "
                f"{info.stored_size} bytes; read {sha[:16]}…, {size} bytes)",
                path=info.key,
                rule="D3",
            )

    @staticmethod
    def _check_plain(info: ObjectInfo, size: int, sha: str) -> None:
        if size != info.size or not hmac.compare_digest(sha, info.sha256):
            raise IntegrityError("decrypted content does not match its SHA-256", path=info.key, rule="D3")

    def get_bytes(self, key: str) -> bytes:
        info, chunks = self._open_checked(key)
        data = b"".join(chunks)
        self._check_stored(info, len(data), hashlib.sha256(data).hexdigest())
        if info.encrypted:
            assert self.master_key is not None
            dec = StreamDecryptor(master=self.master_key, object_key=key)
            data = dec.feed(data) + dec.finish()
            self._check_plain(info, len(data), hashlib.sha256(data).hexdigest())
        return data

    def _stream_plain(
        self, info: ObjectInfo, chunks: Iterator[bytes], progress: Progress | None
    ) -> Iterator[bytes]:
        """Yield verified plaintext; raises IntegrityError/DecryptionError before the caller commits."""
        reader = _HashingReader(chunks)
        stream = prefetch(iter(reader))
        if not info.encrypted:
            # Plain and stored bytes are the same (from_metadata checked the hashes agree): hash once.
            for chunk in stream:
                if progress is not None:
                    progress(reader.size, info.stored_size)
                yield chunk
                if reader.size > info.stored_size:
                    break
            self._check_stored(info, reader.size, reader.sha.hexdigest())
            return
        assert self.master_key is not None  # _open_checked refused encrypted objects without a key
        dec = StreamDecryptor(master=self.master_key, object_key=info.key)
        plain = hashlib.sha256()
        plain_size = 0
        try:
            for chunk in stream:
                out = dec.feed(chunk)
                plain.update(out)
                plain_size += len(out)
                if progress is not None:
                    progress(reader.size, info.stored_size)
                if out:
                    yield out
                if reader.size > info.stored_size:
                    break
            self._check_stored(info, reader.size, reader.sha.hexdigest())
            out = dec.finish()
            plain.update(out)
            plain_size += len(out)
            yield out
        except DecryptionError as exc:
            # Altered bytes are an integrity failure; intact bytes that do not decrypt mean a wrong key.
            for _ in stream:  # the rest of the stored bytes, hashed on the prefetch thread
                pass
            self._check_stored(info, reader.size, reader.sha.hexdigest())
            raise exc from None
        self._check_plain(info, plain_size, plain.hexdigest())

    def get_file(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        """Download to ``dest`` (mode 0600) only once every check passed; nothing is left otherwise."""
        info, chunks = self._open_checked(key)
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                for block in self._stream_plain(info, chunks, progress):
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
        return info, self._stream_plain(info, chunks, None)

    def check(self, key: str) -> ObjectInfo:
        """Read and verify an object end to end without keeping it."""
        info, chunks = self._open_checked(key)
        for _ in self._stream_plain(info, chunks, None):
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

    def _manifest_mac(self, objects: dict[str, dict[str, object]]) -> str | None:
        if self.master_key is None:
            return None
        body = json.dumps(objects, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return self.master_key.mac(b"cyxwiz-manifest-v1\n" + body)

    def read_manifest(self, manifest_key: str) -> dict[str, dict[str, object]]:
        """Entries of a manifest after checking its tag; {} when there is none yet."""
        try:
            raw = self.get_bytes(manifest_key)
        except NotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            objects = doc["objects"]
            if doc.get("v") != 1 or not isinstance(objects, dict):
                raise ValueError("shape")
        except (ValueError, KeyError, TypeError):
            raise IntegrityError("manifest is malformed", path=manifest_key, rule="D3") from None
        expected = self._manifest_mac(objects)
        if expected is not None and not hmac.compare_digest(str(doc.get("tag")), expected):
            raise IntegrityError("manifest tag does not match", path=manifest_key, rule="D3")
        return objects

    def _manifest_update(self, info: ObjectInfo | None, *, remove: str | None = None) -> None:
        key = info.key if info is not None else remove
        assert key is not None
        manifest_key = layout.manifest_for(key)
        if manifest_key is None or manifest_key == key:
            return
        # One writer per job (the control plane); the lock covers threads of that writer.
        with self._manifest_lock:
            objects = self.read_manifest(manifest_key)
            if info is not None:
                objects[key] = {
                    "sha256": info.sha256,
                    "size": info.size,
                    "stored_sha256": info.stored_sha256,
                    "stored_size": info.stored_size,
                    "enc": info.encryption,
                }
            else:
                objects.pop(key, None)
            body = json.dumps(
                {"v": 1, "objects": objects, "tag": self._manifest_mac(objects)}, sort_keys=True, indent=1
            ).encode("utf-8")
            minfo, stored = self._seal_bytes(manifest_key, body, encrypt=False)
            self._write(minfo, iter((stored,)), progress=None)

    # -- verification --------------------------------------------------------------------------------

    def verify(self, prefix: str) -> VerifyReport:
        """Re-hash (and decrypt) every object under ``prefix`` and compare with the manifests."""
        if prefix:
            layout.validate_key(prefix.rstrip("/"), field="prefix")
        keys = self._keys(prefix)
        checked: list[ObjectInfo] = []
        problems: list[Problem] = []
        manifests: dict[str, dict[str, dict[str, object]] | None] = {}
        for key in keys:
            manifest_key = layout.manifest_for(key)
            if manifest_key is not None and manifest_key not in manifests:
                try:
                    manifests[manifest_key] = self.read_manifest(manifest_key)
                except CyxwizError as exc:
                    manifests[manifest_key] = None
                    problems.append(Problem(manifest_key, exc.code, str(exc)))
            if layout.is_manifest(key):
                continue
            try:
                info = self.check(key)
            except CyxwizError as exc:
                problems.append(Problem(key, exc.code, str(exc)))
                continue
            checked.append(info)
            entries = manifests.get(manifest_key) if manifest_key else None
            if entries is None:
                continue
            entry = entries.get(key)
            if entry is None:
                problems.append(Problem(key, "unlisted", "object is not in its manifest"))
            elif entry.get("sha256") != info.sha256 or entry.get("stored_sha256") != info.stored_sha256:
                problems.append(Problem(key, "manifest-mismatch", "object hash differs from its manifest"))
        present = set(keys)
        for entries in manifests.values():
            for key in sorted(entries or {}):
                if key.startswith(prefix) and key not in present:
                    problems.append(Problem(key, "missing", "listed in the manifest but not stored"))
        return VerifyReport(prefix=prefix, checked=tuple(checked), problems=tuple(problems))
