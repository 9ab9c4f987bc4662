"""cyxwiz.storage: verified, encrypted object store (S3 via boto3, or a local directory) — SPEC D2, D3, H3.

Public API (contract)::

    ObjectStore       Protocol: put_bytes, put_file, get_bytes, get_file, list, head, delete, verify
    LocalObjectStore  LocalObjectStore(root=..., master_key=...)
    S3ObjectStore     S3ObjectStore(bucket=..., ...), .from_env()  (imported lazily: boto3 is heavy)
    MasterKey         .generate(), .from_env(), .from_file(path), .write(path)
    layout            job_input, job_output, job_proof, job_verification, audit_day, audit_digest
"""

from __future__ import annotations

from cyxwiz.storage import layout
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import LocalObjectStore
from cyxwiz.storage.model import ObjectInfo, ObjectStore, Problem, Progress, VerifyReport

__all__ = [
    "LocalObjectStore",
    "MasterKey",
    "ObjectInfo",
    "ObjectStore",
    "Problem",
    "Progress",
    "VerifyReport",
    "layout",
]
