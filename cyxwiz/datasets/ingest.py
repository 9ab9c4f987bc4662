"""``cyxwiz job submit --dataset FILE``: a local file into the user's own area, named by the job (G1, D3).

User side: :func:`hash_file` (SHA-256 and size in one streaming pass), then the client PUTs
:func:`file_chunks` through the presigned URL the coordinator granted. Coordinator side:
:func:`upload_grant` presigns a PUT of exactly that hash and size to
``users/{user}/datasets/{sha256}{.ext}`` — a key the user's own jobs may read and nobody else's — and
refuses an empty or too large file before anything exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from cyxwiz.datasets.checks import DatasetLimits
from cyxwiz.datasets.sources import LOCAL_STORE_BUCKET, dataset_key
from cyxwiz.errors import ValidationError

SUFFIXES = {".npz": ".npz", ".csv": ".csv"}
_BLOCK = 1 << 20


class PutPresigner(Protocol):
    """The part of :class:`cyxwiz.storage.presign.Presigner` a grant needs (``store`` names the bucket)."""

    store: Any

    def presign_put(self, key: str, *, sha256: str, size: int, expires_in: int = ...) -> Any: ...


def suffix_of(path: Path) -> str:
    """``.npz`` / ``.csv`` stay in the key (the format follows the suffix); anything else is ``.bin``."""
    return SUFFIXES.get(path.suffix.lower(), ".bin")


def hash_file(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a local file, read once in 1 MiB blocks."""
    if not path.is_file():
        raise ValidationError("dataset file not found", path=str(path), field="dataset", rule="G1")
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            size += len(block)
    if size == 0:
        raise ValidationError("the file is empty", path=str(path), field="dataset", rule="G1")
    return digest.hexdigest(), size


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            yield block


def store_uri(presigner: PutPresigner, key: str) -> str:
    """How a job names an object of the control plane's store: ``s3://{bucket}/{prefix}{key}``."""
    store = presigner.store
    bucket = getattr(store, "bucket", None) or LOCAL_STORE_BUCKET
    return f"s3://{bucket}/{getattr(store, 'prefix', '')}{key}"


def upload_grant(
    presigner: PutPresigner,
    user: str,
    *,
    sha256: str,
    size: int,
    suffix: str,
    ttl_s: int = 900,
    limits: DatasetLimits | None = None,
) -> dict[str, Any]:
    """The presigned PUT for one dataset upload plus the ``{uri, sha256}`` the job then names."""
    limits = limits or DatasetLimits.from_env()
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValidationError("an empty dataset is refused", field="size", rule="G1")
    if size > limits.max_bytes:
        raise ValidationError(f"{size} bytes; the limit is {limits.max_bytes}", field="size", rule="G1")
    key = dataset_key(user, sha256, suffix)
    request = presigner.presign_put(key, sha256=sha256, size=size, expires_in=ttl_s)
    return {
        "uri": store_uri(presigner, key),
        "sha256": sha256,
        "size": size,
        "upload": request.to_dict(),
    }
