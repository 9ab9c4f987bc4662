"""Where closed audit days go (SPEC H3: archived indefinitely, encrypted).

The log needs only two things from an archive, so the interface is that small: ``put_file`` and
``exists``. :class:`LocalDirectoryArchive` is the embedded default; :class:`ObjectStoreArchive` adapts any
object store with ``put_file(key, path, *, encrypt=...)``, ``head(key)`` and ``check(key)``
(``cyxwiz.storage`` local and S3 stores have that shape) and asks it to encrypt client-side. Every upload
is read back and verified end to end (decrypted, hashed, compared with the local file) before it counts,
so retention never deletes a day whose only other copy is damaged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable

from cyxwiz.errors import AuditError, NotFoundError, StorageError
from cyxwiz.hashing import file_sha256
from cyxwiz.shared_dir import dir_mode, file_mode


@runtime_checkable
class AuditArchive(Protocol):
    """Destination for closed days and their digests. Keys are '/'-separated relative names."""

    def put_file(self, key: str, path: Path) -> object: ...

    def exists(self, key: str) -> bool: ...


def archive_key(day: date, filename: str, *, prefix: str = "audit") -> str:
    """``audit/2026-11-22.jsonl.gz`` for ``audit-2026-11-22.jsonl.gz``: the ``cyxwiz.storage.layout``
    keys (``audit_day``, ``audit_digest``), derived here so the log needs no storage import."""
    stem = f"audit-{day.isoformat()}"
    if not filename.startswith(stem):
        raise AuditError("file does not belong to that day", field="filename")
    return f"{prefix}/{day.isoformat()}{filename[len(stem) :]}"


class LocalDirectoryArchive:
    """Archive into a directory tree (another disk or a mounted bucket). Files are written atomically."""

    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\x00" in key:
            raise AuditError("archive key must be relative without '..'", field="key")
        return self.root.joinpath(*pure.parts)

    def put_file(self, key: str, path: Path) -> str:
        """Copy ``path`` to ``key``; return its SHA-256. Re-putting identical content is a no-op."""
        target = self._path(key)
        target.parent.mkdir(mode=dir_mode(self.root), parents=True, exist_ok=True)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, file_mode(self.root))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if hashlib.sha256(target.read_bytes()).hexdigest() != digest:
            raise AuditError("archived copy differs from the local file after upload", path=key, rule="H3")
        return digest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def get_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError("not in the archive", path=key)
        return path


class _StoreLike(Protocol):
    def put_file(self, key: str, path: Path, *, encrypt: bool = ...) -> Any: ...

    def head(self, key: str) -> Any: ...

    def check(self, key: str) -> Any: ...


class ObjectStoreArchive:
    """Adapter: an object store (S3 or local, ``cyxwiz.storage``) as an :class:`AuditArchive`."""

    def __init__(self, *, store: _StoreLike, encrypt: bool = True) -> None:
        self.store = store
        self.encrypt = encrypt

    def put_file(self, key: str, path: Path) -> object:
        """Upload (encrypted), then read the object back through every check of the store (tag, stored
        hash, decryption) and compare its plaintext hash with the local file's (H3: verified archive)."""
        local = file_sha256(path)
        self.store.put_file(key, path, encrypt=self.encrypt)
        try:
            info = self.store.check(key)
        except StorageError as exc:
            raise AuditError(f"archived copy fails verification: {exc}", path=key, rule="H3") from exc
        if getattr(info, "sha256", None) != local:
            raise AuditError("archived copy differs from the local file after upload", path=key, rule="H3")
        return info

    def exists(self, key: str) -> bool:
        try:
            self.store.head(key)
        except NotFoundError:
            return False
        except StorageError as exc:
            # Unknown is not "absent": retention must not delete a day on a transient error.
            raise AuditError(f"cannot check archive: {exc}", path=key) from exc
        return True
