"""Local directory object store: the embedded default, same keys and same checks as S3 (SPEC D2, D3).

On disk::

    {root}/objects/{key}         the stored bytes (ciphertext when client-side encrypted), mode 0600
    {root}/meta/{key}.json       the object's metadata (what S3 keeps as x-amz-meta-*), mode 0600

Directories are 0700. Writes go to a temporary file in the target directory and are renamed into place,
so a reader never sees half an object; the metadata is renamed last, and a crash in between leaves a
body whose hash does not match, which every read refuses.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

from cyxwiz.errors import ConfigError, IntegrityError, NotFoundError, StorageError
from cyxwiz.shared_dir import dir_mode, file_mode
from cyxwiz.storage.base import INLINE_LIMIT, READ_BLOCK, BaseObjectStore
from cyxwiz.storage.crypto import DEFAULT_CHUNK, MasterKey
from cyxwiz.storage.model import ObjectInfo, Progress

ROOT_ENV = "CYXWIZ_STORE_ROOT"


class LocalObjectStore(BaseObjectStore):
    def __init__(
        self,
        *,
        root: Path | str,
        master_key: MasterKey | None,
        chunk_size: int = DEFAULT_CHUNK,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        super().__init__(master_key=master_key, chunk_size=chunk_size, inline_limit=inline_limit)
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"
        for directory in (self.root, self._objects, self._meta):
            directory.mkdir(mode=dir_mode(directory.parent), parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalObjectStore(root={str(self.root)!r}, master_key={self.master_key!r})"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LocalObjectStore:
        env = os.environ if environ is None else environ
        root = env.get(ROOT_ENV)
        if not root:
            raise ConfigError(f"{ROOT_ENV} is not set", field=ROOT_ENV, rule="D2")
        return cls(root=root, master_key=MasterKey.from_env(dict(env)))

    # Keys were validated by the caller (layout.validate_key): no '..', no leading dots, ASCII only.
    def _body_path(self, key: str) -> Path:
        return self._objects / key

    def _meta_path(self, key: str) -> Path:
        return self._meta / f"{key}.json"

    def _atomic_write(self, path: Path, chunks: Iterator[bytes]) -> Path:
        # Modes follow the root: shared by the coordinator's and the control worker's accounts in production.
        path.parent.mkdir(mode=dir_mode(self.root), parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode(self.root))
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _write(self, info: ObjectInfo, chunks: Iterator[bytes], *, progress: Progress | None) -> None:
        body_path, meta_path = self._body_path(info.key), self._meta_path(info.key)
        if body_path.is_dir() or meta_path.is_dir():
            raise StorageError(
                "an object key cannot also be a prefix of other keys", path=info.key, rule="D3"
            )

        def counted() -> Iterator[bytes]:
            done = 0
            for chunk in chunks:
                done += len(chunk)
                yield chunk
                if progress is not None:
                    progress(done, info.stored_size)

        body_tmp = self._atomic_write(body_path, counted())
        meta = json.dumps(info.to_metadata(), sort_keys=True).encode("utf-8")
        try:
            meta_tmp = self._atomic_write(meta_path, iter((meta,)))
        except BaseException:
            body_tmp.unlink(missing_ok=True)
            raise
        os.replace(body_tmp, body_path)
        os.replace(meta_tmp, meta_path)

    def _head(self, key: str) -> tuple[dict[str, str], _dt.datetime | None]:
        body_path, meta_path = self._body_path(key), self._meta_path(key)
        if not body_path.is_file():
            raise NotFoundError("no such object", path=key)
        try:
            meta = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            raise IntegrityError("object has no metadata", path=key, rule="D3") from None
        except ValueError:
            raise IntegrityError("object metadata is not JSON", path=key, rule="D3") from None
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise IntegrityError("object metadata is malformed", path=key, rule="D3")
        modified = _dt.datetime.fromtimestamp(body_path.stat().st_mtime, tz=_dt.UTC)
        return meta, modified

    def _read(self, key: str) -> tuple[dict[str, str], _dt.datetime | None, Iterator[bytes]]:
        meta, modified = self._head(key)
        fh = self._body_path(key).open("rb")

        def chunks() -> Iterator[bytes]:
            with fh:
                while block := fh.read(READ_BLOCK):
                    yield block

        return meta, modified, chunks()

    def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self._objects):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self._objects).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # temporary files of writes in progress
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def _remove(self, key: str) -> None:
        body_path = self._body_path(key)
        if not body_path.is_file():
            raise NotFoundError("no such object", path=key)
        body_path.unlink()
        self._meta_path(key).unlink(missing_ok=True)

    # -- raw access for the presigned-URL handler and tests ---------------------------------------------

    def body_path(self, key: str) -> Path:
        """Where the stored bytes of ``key`` live (tests tamper with it; nothing else should)."""
        return self._body_path(key)
