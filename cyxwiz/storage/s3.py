"""S3 backend via boto3: AWS, MinIO, Ceph RGW — anything speaking the S3 protocol (SPEC D2, D3, H3).

On top of the shared checks (base.py) this backend

* sends every body's SHA-256 as ``ChecksumSHA256`` (whole object for single PUTs, per part for multipart),
  so a server that checks refuses corrupted uploads; we re-check on every read either way, because
  S3-compatible servers used in tests (moto) do not;
* asks for server-side encryption (``AES256`` = SSE-S3, or ``aws:kms`` = SSE-KMS with a key id) on top of
  client-side envelope encryption;
* streams large bodies as multipart uploads with progress, retrying each part with exponential backoff
  and jitter and aborting the upload on failure so no orphaned parts are billed;
* presigns job-scoped GET/PUT URLs with the hash and metadata bound into the signature (presign.py).
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

from cyxwiz.errors import ConfigError, NotFoundError, StorageError
from cyxwiz.storage.base import READ_BLOCK, BaseObjectStore
from cyxwiz.storage.crypto import DEFAULT_CHUNK, MasterKey
from cyxwiz.storage.model import ObjectInfo, Progress

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

#: S3 allows at most 10,000 parts of 5 MiB..5 GiB (last part smaller).
DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
SSE_MODES = ("AES256", "aws:kms")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_RETRYABLE_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "SlowDown",
    "RequestTimeout",
    "ServiceUnavailable",
}


def b64_sha256(hex_digest: str) -> str:
    """S3 wants checksums as base64 of the raw digest."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def _rechunk(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    # The last part is yielded only once the source is exhausted, so a source that fails its own
    # end-of-stream check raises before CompleteMultipartUpload.
    if buffer:
        yield bytes(buffer)


class S3ObjectStore(BaseObjectStore):
    def __init__(
        self,
        *,
        bucket: str,
        master_key: MasterKey | None,
        prefix: str = "",
        client: S3Client | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        addressing_style: str = "auto",
        sse: str | None = "AES256",
        kms_key_id: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = 4,
        max_attempts: int = 5,
        request_attempts: int = 3,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        if not bucket:
            raise ConfigError("bucket is required", field="bucket", rule="D2")
        if sse is not None and sse not in SSE_MODES:
            raise ConfigError(f"sse must be one of {SSE_MODES} or none", field="sse", rule="D2")
        if kms_key_id and sse != "aws:kms":
            raise ConfigError("kms_key_id needs sse='aws:kms'", field="kms_key_id", rule="D2")
        if part_size < 1 or max_attempts < 1 or concurrency < 1:
            raise ConfigError(
                "part_size, concurrency and max_attempts must be positive", field="part_size", rule="D2"
            )
        super().__init__(master_key=master_key, chunk_size=chunk_size, inline_limit=part_size)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.part_size = part_size
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.region = region
        self.client: S3Client = client or self._make_client(
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            addressing_style=addressing_style,
            request_attempts=request_attempts,
        )
        self.region = self.client.meta.region_name

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r}, prefix={self.prefix!r}, sse={self.sse!r})"

    @staticmethod
    def _make_client(
        *,
        endpoint_url: str | None,
        region: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        session_token: str | None,
        addressing_style: str,
        request_attempts: int,
    ) -> S3Client:
        import boto3
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},  # type: ignore[arg-type]
            # botocore retries each request; part-level retry with backoff sits on top (see _retry).
            retries={"max_attempts": request_attempts, "mode": "standard"},
            # We send and check SHA-256 ourselves; skip botocore's extra CRC pass over every body.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            region_name=region,
        )
        return session.client("s3", endpoint_url=endpoint_url, config=config)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3ObjectStore:
        """Configuration from the environment (credentials follow boto3's usual chain when unset).

        ``CYXWIZ_S3_BUCKET`` (required), ``CYXWIZ_S3_PREFIX``, ``CYXWIZ_S3_ENDPOINT_URL``,
        ``CYXWIZ_S3_REGION``, ``CYXWIZ_S3_ADDRESSING`` (auto|path|virtual), ``CYXWIZ_S3_SSE``
        (AES256|aws:kms|none), ``CYXWIZ_S3_KMS_KEY_ID``, ``CYXWIZ_S3_PART_SIZE``, and the master key from
        ``CYXWIZ_STORE_MASTER_KEY`` / ``CYXWIZ_STORE_MASTER_KEY_FILE``.
        """
        env = dict(os.environ if environ is None else environ)
        bucket = env.get("CYXWIZ_S3_BUCKET", "")
        if not bucket:
            raise ConfigError("CYXWIZ_S3_BUCKET is not set", field="CYXWIZ_S3_BUCKET", rule="D2")
        sse = env.get("CYXWIZ_S3_SSE", "AES256")
        try:
            part_size = int(env.get("CYXWIZ_S3_PART_SIZE", DEFAULT_PART_SIZE))
        except ValueError:
            raise ConfigError("not an integer", field="CYXWIZ_S3_PART_SIZE") from None
        return cls(
            bucket=bucket,
            prefix=env.get("CYXWIZ_S3_PREFIX", ""),
            master_key=MasterKey.from_env(env),
            endpoint_url=env.get("CYXWIZ_S3_ENDPOINT_URL") or None,
            region=env.get("CYXWIZ_S3_REGION") or None,
            addressing_style=env.get("CYXWIZ_S3_ADDRESSING", "auto"),
            sse=None if sse.lower() == "none" else sse,
            kms_key_id=env.get("CYXWIZ_S3_KMS_KEY_ID") or None,
            part_size=part_size,
        )

    # -- error mapping and retries --------------------------------------------------------------------

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise NotFoundError("no such object", path=key) from None
            if code == "NoSuchBucket":
                raise ConfigError(f"bucket {self.bucket!r} does not exist", field="bucket") from None
            raise StorageError(f"S3 refused the request ({code})", path=key, rule="D3") from None
        except BotoCoreError as exc:
            raise StorageError(f"S3 unreachable ({type(exc).__name__})", path=key) from None

    def _retry(self, key: str, call: Callable[[], T]) -> T:
        """Run ``call`` with exponential backoff and full jitter on transient failures."""
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        for attempt in range(self.max_attempts):
            try:
                with self._errors(key):
                    return call()
            except StorageError as exc:
                cause = exc.__context__
                transient = isinstance(cause, ConnectionError | HTTPClientError) or (
                    isinstance(cause, ClientError)
                    and str(cause.response.get("Error", {}).get("Code", "")) in _RETRYABLE_CODES
                )
                if not transient or attempt + 1 == self.max_attempts:
                    raise
            delay = min(self.backoff_cap, self.backoff_base * 2**attempt)
            time.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not cryptography
        raise AssertionError("unreachable")

    # -- transport ------------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _sse_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.sse is not None:
            args["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def _write(self, info: ObjectInfo, chunks: Iterator[bytes], *, progress: Progress | None) -> None:
        common: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(info.key),
            "Metadata": info.to_metadata(),
            **self._sse_args(),
        }
        if info.stored_size <= self.part_size:
            body = b"".join(chunks)
            self._retry(
                info.key,
                lambda: self.client.put_object(
                    **common,
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=b64_sha256(info.stored_sha256),
                ),
            )
            if progress is not None:
                progress(len(body), info.stored_size)
            return
        self._multipart(info, chunks, common, progress)

    def _multipart(
        self, info: ObjectInfo, chunks: Iterator[bytes], common: dict[str, Any], progress: Progress | None
    ) -> None:
        import hashlib

        upload = self._retry(
            info.key, lambda: self.client.create_multipart_upload(**common, ChecksumAlgorithm="SHA256")
        )
        upload_id = upload["UploadId"]
        bucket_key: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(info.key)}
        try:
            parts: list[Any] = []
            done = 0
            # Parts go up ``concurrency`` at a time: reading, encrypting and hashing the next part overlaps
            # the upload of the previous ones, and memory stays at concurrency x part_size.
            with ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="cyxwiz-s3-part"
            ) as pool:
                in_flight: deque[tuple[Future[tuple[Any, str]], int, int]] = deque()

                def settle() -> None:
                    nonlocal done
                    future, number, length = in_flight.popleft()
                    answer, digest = future.result()
                    parts.append({"ETag": answer["ETag"], "PartNumber": number, "ChecksumSHA256": digest})
                    done += length
                    if progress is not None:
                        progress(done, info.stored_size)

                for number, part in enumerate(_rechunk(chunks, self.part_size), start=1):

                    def send(part: bytes = part, number: int = number) -> tuple[Any, str]:
                        # Hashed here, on the pool thread, while the next part is read and encrypted.
                        digest = base64.b64encode(hashlib.sha256(part).digest()).decode("ascii")
                        answer = self.client.upload_part(
                            **bucket_key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=part,
                            ChecksumAlgorithm="SHA256",
                            ChecksumSHA256=digest,
                        )
                        return answer, digest

                    in_flight.append((pool.submit(self._retry, info.key, send), number, len(part)))
                    if len(in_flight) >= self.concurrency:
                        settle()
                while in_flight:
                    settle()
            self._retry(
                info.key,
                lambda: self.client.complete_multipart_upload(
                    **bucket_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            # Best effort: an abort that fails leaves parts a bucket lifecycle rule will clean up.
            with suppress(Exception):  # the original error is the one to report
                self.client.abort_multipart_upload(**bucket_key, UploadId=upload_id)
            raise

    def _head(self, key: str) -> tuple[dict[str, str], _dt.datetime | None]:
        answer = self._retry(key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        return dict(answer.get("Metadata", {})), answer.get("LastModified")

    def head_raw(self, key: str) -> dict[str, Any]:
        """The server's own view of an object (SSE mode, checksums) — for checks and tests."""
        return dict(
            self._retry(
                key,
                lambda: self.client.head_object(
                    Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
                ),
            )
        )

    def _read(self, key: str) -> tuple[dict[str, str], _dt.datetime | None, Iterator[bytes]]:
        answer = self._retry(key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)))
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                with self._errors(key):
                    yield from body.iter_chunks(READ_BLOCK)
            finally:
                body.close()

        return dict(answer.get("Metadata", {})), answer.get("LastModified"), chunks()

    def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors(prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys.extend(
                    obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []) if "Key" in obj
                )
        return sorted(keys)

    def _remove(self, key: str) -> None:
        self._head(key)  # S3 deletes are idempotent; callers expect NotFoundError for a missing key
        self._retry(key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def credentials(self) -> Any:
        """Frozen credentials of the client (access_key, secret_key, token), for presign verification."""
        creds = getattr(getattr(self.client, "_request_signer", None), "_credentials", None)
        return creds.get_frozen_credentials() if creds is not None else None

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (embedded/dev setups; production buckets are provisioned)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            with self._errors(self.bucket):
                if self.region and self.region != "us-east-1":
                    self.client.create_bucket(
                        Bucket=self.bucket,
                        CreateBucketConfiguration={"LocationConstraint": self.region},  # type: ignore[typeddict-item]
                    )
                else:
                    self.client.create_bucket(Bucket=self.bucket)
