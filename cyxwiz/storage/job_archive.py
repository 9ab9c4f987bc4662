"""One job's archive as its owner reads it back: which stored objects are its artifacts (C2, D2, D3).

The lifecycle archives a job under ``jobs/{id}/``: the node's outputs (model weights sealed client-side),
the verification report and the settlement record. Those, and only those, are the archive: the job's
inputs, the store's manifest and anything outside the job's prefix (the sealed holdout, another job, a
user's dataset area) are never reachable by a name, however it is spelled. Reads go through the store's
verified stream, so a body that fails its SHA-256 aborts before its end (D3).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cyxwiz.errors import NotFoundError, ValidationError
from cyxwiz.storage import layout

#: Names of a job's archive besides its ``outputs/``: what the lifecycle's archive step writes.
RECORDS = ("verification.json", "settlement.json")
OUTPUTS = "outputs/"
#: An archive name as a client spells it: relative, ASCII, no dot segments (layout.validate_key decides).
_NAME = re.compile(r"[A-Za-z0-9._=+@/-]{1,512}")


class ArchiveStore(Protocol):
    """What the archive reads from an object store (:class:`cyxwiz.storage.base.BaseObjectStore`)."""

    def list(self, prefix: str = "") -> list[Any]: ...

    def open_verified(self, key: str) -> tuple[Any, Iterator[bytes]]: ...


@dataclass(frozen=True, kw_only=True)
class ArchivedObject:
    """One artifact: its name inside the job's archive and the content's size and SHA-256."""

    name: str
    size: int
    sha256: str
    encrypted: bool

    @classmethod
    def from_info(cls, job_id: str, info: Any) -> ArchivedObject:
        return cls(
            name=str(info.key).removeprefix(layout.job_prefix(job_id)),
            size=int(info.size),
            sha256=str(info.sha256),
            encrypted=bool(info.encrypted),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "encrypted": self.encrypted}


def is_archived_name(name: str) -> bool:
    return name in RECORDS or (name.startswith(OUTPUTS) and len(name) > len(OUTPUTS))


def archive_key(job_id: str, name: str) -> str:
    """The store key of ``name`` in the job's archive; a malformed name is 422 (E5), one outside the
    archive 404 — the same answer as a name that was never written, so nothing else is probed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError("not an archive object name", field="name", rule="E5")
    layout.validate_key(name, field="name")
    if not is_archived_name(name):
        raise NotFoundError("no such object in the job's archive", field="name", rule="C2")
    return layout.job_prefix(job_id) + name


def list_archive(store: ArchiveStore, job_id: str) -> list[ArchivedObject]:
    """The job's archived artifacts, sorted by name (metadata tags checked; bodies are checked on read)."""
    prefix = layout.job_prefix(job_id)
    found = [ArchivedObject.from_info(job_id, info) for info in store.list(prefix)]
    return sorted((obj for obj in found if is_archived_name(obj.name)), key=lambda obj: obj.name)


def open_archived(store: ArchiveStore, job_id: str, name: str) -> tuple[ArchivedObject, Iterator[bytes]]:
    """The artifact's metadata and its verified plaintext (decrypted when it was sealed client-side)."""
    key = archive_key(job_id, name)
    try:
        info, chunks = store.open_verified(key)
    except NotFoundError:
        raise NotFoundError("no such object in the job's archive", field="name", rule="C2") from None
    return ArchivedObject.from_info(job_id, info), _last_held_back(chunks)


def _last_held_back(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The store checks a body's hash once its stream ends: keep the last block back until then, so a
    failed check leaves the reader with a short body (content-length unmet), never a whole tampered one."""
    held: bytes | None = None
    for chunk in chunks:
        if held:
            yield held
        held = chunk
    if held:
        yield held
