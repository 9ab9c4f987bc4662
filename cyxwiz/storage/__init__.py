"""cyxwiz.storage: verified, encrypted object store (S3 via boto3, or a local directory) — SPEC D2, D3, H3.

Public API (contract)::

    ObjectStore       Protocol: put_bytes, put_file, get_bytes, get_file, list, head, delete, verify
    LocalObjectStore  LocalObjectStore(root=..., master_key=...)
    S3ObjectStore     S3ObjectStore(bucket=..., ...), .from_env()  (imported lazily: boto3 is heavy)
    MasterKey         .generate(), .from_env(), .from_file(path), .write(path)
    layout            job_input, job_output, job_proof, job_verification, audit_day, audit_digest
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cyxwiz.storage import layout
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import LocalObjectStore
from cyxwiz.storage.model import ObjectInfo, ObjectStore, Problem, Progress, VerifyReport

if TYPE_CHECKING:
    from cyxwiz.storage.s3 import S3ObjectStore

__all__ = [
    "LocalObjectStore",
    "MasterKey",
    "ObjectInfo",
    "ObjectStore",
    "Problem",
    "Progress",
    "S3ObjectStore",
    "VerifyReport",
    "layout",
]


def __getattr__(name: str) -> Any:
    # boto3 takes ~0.3 s to import: only code that uses S3 pays for it.
    if name == "S3ObjectStore":
        from cyxwiz.storage.s3 import S3ObjectStore

        return S3ObjectStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
