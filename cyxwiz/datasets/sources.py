"""Read a user's dataset file on the trusted side, bounded and hash-checked on every read (SPEC D3, G1, C2).

Where a URI may point, decided before any byte is read:

* ``s3://{store bucket}/users/{user}/...`` — the control plane's own object store, only inside the
  submitting user's area (where ``cyxwiz job submit --dataset`` uploads); every other key of the store
  (other users, jobs, holdouts, audit) is refused, so a job cannot make the trusted side ship someone
  else's object to a node.
* ``s3://{other bucket}/key`` — any S3 endpoint (``CYXWIZ_DATASET_S3_ENDPOINT_URL``), with the buckets
  ``CYXWIZ_DATASET_S3_BUCKETS`` allows (all but the store's own when unset).
* ``file:///path`` — development only: refused unless ``CYXWIZ_DATASET_FILE_ROOTS`` names directories,
  and then only for regular files whose real path (symlinks resolved) lies inside one of them.

The content must match the spec's SHA-256 (a mismatch is a 422 naming ``dataset.sha256``, rule D3).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyxwiz.datasets.checks import DatasetLimits
from cyxwiz.datasets.refs import DatasetRef
from cyxwiz.errors import AuthorizationError, ConfigError, CyxwizError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from cyxwiz.storage.base import BaseObjectStore

#: The bucket name under which a local (directory) store is addressed in ``s3://`` URIs.
LOCAL_STORE_BUCKET = "cyxwiz"
USERS_PREFIX = "users/"


def user_area(user: str) -> str:
    """``users/{user}/`` — a user's own part of the object store (user ids are validated as key segments)."""
    from cyxwiz.storage import layout

    layout.validate_key(user, field="user")
    if "/" in user:
        raise ValidationError("a user id is one key segment", field="user", rule="C2")
    return f"{USERS_PREFIX}{user}/"


def dataset_key(user: str, sha256: str, suffix: str) -> str:
    """Content-addressed key of an uploaded dataset in the user's area: ``users/{u}/datasets/{sha}{.ext}``."""
    if suffix not in (".npz", ".csv", ".bin"):
        raise ValidationError("suffix must be .npz, .csv or .bin", field="suffix", rule="G1")
    return f"{user_area(user)}datasets/{sha256}{suffix}"


@dataclass(frozen=True, kw_only=True)
class DatasetSources:
    """Where the trusted side may read datasets from, and with which clients."""

    store: BaseObjectStore | None = None
    store_bucket: str = LOCAL_STORE_BUCKET
    #: The S3 store's key prefix (URIs name ``{prefix}{key}``); empty for a local store.
    store_prefix: str = ""
    #: Builds the client for external S3 (None: s3:// outside the store is refused).
    s3_client: Callable[[], Any] | None = None
    #: External buckets allowed; None allows any bucket but the store's own.
    s3_buckets: frozenset[str] | None = None
    file_roots: tuple[Path, ...] = ()
    limits: DatasetLimits = field(default_factory=DatasetLimits)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, store: BaseObjectStore | None = None
    ) -> DatasetSources:
        """``CYXWIZ_DATASET_S3_ENDPOINT_URL`` / ``_REGION`` / ``_ACCESS_KEY_ID`` / ``_SECRET_ACCESS_KEY``
        (boto3's own chain when unset), ``CYXWIZ_DATASET_S3_BUCKETS`` (comma-separated),
        ``CYXWIZ_DATASET_FILE_ROOTS`` (``os.pathsep``-separated; development only) and the limits."""
        env = dict(os.environ if env is None else env)
        bucket = getattr(store, "bucket", None) or LOCAL_STORE_BUCKET
        buckets = env.get("CYXWIZ_DATASET_S3_BUCKETS", "").strip()
        roots = tuple(Path(p) for p in env.get("CYXWIZ_DATASET_FILE_ROOTS", "").split(os.pathsep) if p)
        for root in roots:
            if not root.is_absolute():
                raise ConfigError("dataset file roots must be absolute", field="CYXWIZ_DATASET_FILE_ROOTS")
        return cls(
            store=store,
            store_bucket=bucket,
            store_prefix=str(getattr(store, "prefix", "") or ""),
            s3_client=lambda: _external_client(env),
            s3_buckets=frozenset(b.strip() for b in buckets.split(",") if b.strip()) if buckets else None,
            file_roots=roots,
            limits=DatasetLimits.from_env(env),
        )

    def fetch(self, ref: DatasetRef, *, user: str, field: str = "dataset") -> bytes:
        """The file's bytes, after the access policy, the size limit and the SHA-256 check."""
        loc = ref.location
        if loc.scheme == "file":
            data = self._read_file(Path(loc.path), field=field)
        elif loc.bucket == self.store_bucket:
            data = self._read_store(loc.key, user=user, field=field)
        else:
            data = self._read_s3(loc.bucket, loc.key, field=field)
        if not data:
            raise ValidationError("the file is empty", field=field, rule="G1")
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), ref.sha256):
            raise ValidationError(
                "the content does not match this SHA-256 (changed or tampered dataset)",
                field=f"{field}.sha256",
                rule="D3",
            )
        return data

    def _too_big(self, size: int, field: str) -> ValidationError:
        return ValidationError(
            f"is {size} bytes; the limit is {self.limits.max_bytes}", field=field, rule="G1"
        )

    def _read_store(self, key: str, *, user: str, field: str) -> bytes:
        from cyxwiz.storage import layout

        area = user_area(user)
        key = key[len(self.store_prefix) :] if key.startswith(self.store_prefix) else ""
        if not key.startswith(area):
            raise AuthorizationError(
                f"in the control plane's store a job reads only its user's area {area}",
                field=f"{field}.uri",
                rule="C2",
            )
        layout.validate_key(key, field=f"{field}.uri")
        if self.store is None:
            raise ConfigError("no object store is configured for datasets", field=f"{field}.uri")
        try:
            info = self.store.head(key)
            if info.size > self.limits.max_bytes:
                raise self._too_big(info.size, field)
            return self.store.get_bytes(key)  # the store's own integrity checks, then ours
        except NotFoundError:
            raise ValidationError("no such object in your area", field=f"{field}.uri", rule="G1") from None

    def _read_s3(self, bucket: str, key: str, *, field: str) -> bytes:
        allowed = bucket != self.store_bucket and (self.s3_buckets is None or bucket in self.s3_buckets)
        if not allowed or self.s3_client is None:
            raise AuthorizationError(
                f"bucket {bucket!r} is not an allowed dataset source", field=f"{field}.uri", rule="G1"
            )
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.s3_client()
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            size = int(head.get("ContentLength", 0))
            if size > self.limits.max_bytes:
                raise self._too_big(size, field)
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                data: bytes = body.read(self.limits.max_bytes + 1)
            finally:
                body.close()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise ValidationError("no such S3 object", field=f"{field}.uri", rule="G1") from None
            raise ValidationError(f"S3 refused the read ({code})", field=f"{field}.uri", rule="G1") from None
        except BotoCoreError as exc:
            raise CyxwizError(f"S3 unreachable ({type(exc).__name__})", field=f"{field}.uri") from None
        if len(data) > self.limits.max_bytes:
            raise self._too_big(len(data), field)
        return data

    def _read_file(self, path: Path, *, field: str) -> bytes:
        if not self.file_roots:
            raise ValidationError(
                "file:// datasets are for development only (CYXWIZ_DATASET_FILE_ROOTS is not set)",
                field=f"{field}.uri",
                rule="G1",
            )
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise ValidationError("no such file", field=f"{field}.uri", rule="G1") from None
        roots = [r.resolve() for r in self.file_roots]
        if not any(real.is_relative_to(root) for root in roots):
            raise AuthorizationError(
                "the file lies outside the allowed dataset directories", field=f"{field}.uri", rule="G1"
            )
        # O_NOFOLLOW on the resolved path: a link swapped in after resolve() is not followed.
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise ValidationError("cannot open the file", field=f"{field}.uri", rule="G1") from None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValidationError("not a regular file", field=f"{field}.uri", rule="G1")
            if st.st_size > self.limits.max_bytes:
                raise self._too_big(st.st_size, field)
            data = handle.read(self.limits.max_bytes + 1)
        if len(data) > self.limits.max_bytes:
            raise self._too_big(len(data), field)
        return data


def _external_client(env: Mapping[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=env.get("CYXWIZ_DATASET_S3_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("CYXWIZ_DATASET_S3_SECRET_ACCESS_KEY") or None,
        region_name=env.get("CYXWIZ_DATASET_S3_REGION") or None,
    )
    return session.client(
        "s3",
        endpoint_url=env.get("CYXWIZ_DATASET_S3_ENDPOINT_URL") or None,
        config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
    )
