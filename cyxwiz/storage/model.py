"""What the store knows about an object, and the Protocol every backend implements (SPEC D2, D3)."""

from __future__ import annotations

import datetime as _dt
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from cyxwiz.errors import IntegrityError
from cyxwiz.storage.crypto import ALGORITHM, MasterKey

#: ``progress(done_bytes, total_bytes)`` — called as stored bytes move.
Progress = Callable[[int, int], None]

ENC_NONE = "none"
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: User-metadata names (S3 sends them as ``x-amz-meta-<name>``; S3 lower-cases names).
META_PREFIX = "cyxwiz-"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object.

    ``sha256``/``size`` describe the content (what ``sha256sum`` of the downloaded file gives);
    ``stored_sha256``/``stored_size`` describe the bytes in the bucket (differ when client-side encrypted).
    ``tag`` is an HMAC under the store's master key over key and hashes, so neither the metadata nor a
    body can be moved to another key or rewritten by someone holding only bucket credentials.
    """

    key: str
    sha256: str
    size: int
    stored_sha256: str
    stored_size: int
    encryption: str = ENC_NONE
    tag: str | None = None
    modified: _dt.datetime | None = None

    @property
    def encrypted(self) -> bool:
        return self.encryption != ENC_NONE

    def tag_message(self) -> bytes:
        return "\n".join(
            [
                "cyxwiz-object-v1",
                self.key,
                self.sha256,
                str(self.size),
                self.stored_sha256,
                str(self.stored_size),
                self.encryption,
            ]
        ).encode("utf-8")

    def signed(self, master: MasterKey | None) -> ObjectInfo:
        return replace(self, tag=master.mac(self.tag_message()) if master is not None else None)

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "cyxwiz-v": "1",
            "cyxwiz-sha256": self.sha256,
            "cyxwiz-size": str(self.size),
            "cyxwiz-stored-sha256": self.stored_sha256,
            "cyxwiz-stored-size": str(self.stored_size),
            "cyxwiz-enc": self.encryption,
        }
        if self.tag is not None:
            meta["cyxwiz-tag"] = self.tag
        return meta

    @classmethod
    def from_metadata(
        cls, key: str, meta: dict[str, str], *, modified: _dt.datetime | None = None
    ) -> ObjectInfo:
        """Parse metadata read back from a backend; anything missing or malformed is an IntegrityError."""
        meta = {k.lower(): v for k, v in meta.items()}
        try:
            if meta["cyxwiz-v"] != "1":
                raise ValueError("version")
            info = cls(
                key=key,
                sha256=meta["cyxwiz-sha256"],
                size=int(meta["cyxwiz-size"]),
                stored_sha256=meta["cyxwiz-stored-sha256"],
                stored_size=int(meta["cyxwiz-stored-size"]),
                encryption=meta["cyxwiz-enc"],
                tag=meta.get("cyxwiz-tag"),
                modified=modified,
            )
        except (KeyError, ValueError):
            raise IntegrityError(
                "object has no valid cyxwiz metadata (written outside the store, or altered)",
                path=key,
                rule="D3",
            ) from None
        if not (_HEX64.fullmatch(info.sha256) and _HEX64.fullmatch(info.stored_sha256)):
            raise IntegrityError("object metadata holds malformed hashes", path=key, rule="D3")
        if info.encryption not in (ENC_NONE, ALGORITHM) or info.size < 0 or info.stored_size < 0:
            raise IntegrityError("object metadata is malformed", path=key, rule="D3")
        if info.encryption == ENC_NONE and (info.sha256, info.size) != (info.stored_sha256, info.stored_size):
            raise IntegrityError("unencrypted object's content and stored hashes differ", path=key, rule="D3")
        return info

    def check_tag(self, master: MasterKey | None) -> None:
        """With a master key, the tag must be present and match (metadata written by this store's owner)."""
        if master is None:
            return
        if self.tag is None:
            raise IntegrityError("object metadata carries no tag", path=self.key, rule="D3")
        if not hmac.compare_digest(self.tag, master.mac(self.tag_message())):
            raise IntegrityError(
                "object metadata tag does not match (metadata altered, or moved from another key)",
                path=self.key,
                rule="D3",
            )


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of re-hashing every object under a prefix and comparing with its manifest."""

    prefix: str
    checked: tuple[ObjectInfo, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@runtime_checkable
class ObjectStore(Protocol):
    """The object store as the rest of cyxwiz sees it (contract: see /tmp/helpers/contracts.md).

    Every read is verified (D3): the stored bytes are re-hashed against the object's metadata, the
    metadata tag is checked under the master key, and encrypted bodies are decrypted and re-hashed.
    """

    def put_bytes(self, key: str, data: bytes, *, encrypt: bool = False) -> ObjectInfo: ...

    def put_file(
        self, key: str, path: Path, *, encrypt: bool = False, progress: Progress | None = None
    ) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes: ...

    def get_file(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def head(self, key: str) -> ObjectInfo: ...

    def delete(self, key: str) -> None: ...

    def verify(self, prefix: str) -> VerifyReport: ...
