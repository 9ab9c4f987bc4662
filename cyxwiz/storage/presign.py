"""Job-scoped presigned URLs: nodes reach exactly their job's inputs and outputs, never cloud credentials.

SPEC C3 (job-scoped access), D3 (hashes bound and checked). The control plane presigns

* GET for each of a job's inputs (``jobs/{job}/inputs/…``), carrying the content hash the node must check;
* PUT for each declared output (``jobs/{job}/outputs/…``) with the SHA-256 and size bound into the
  signature: S3 signs ``x-amz-checksum-sha256``, ``content-length`` and the object's metadata (including the
  store's keyed tag), so a real S3 refuses any other body, and our verified read refuses it anywhere.

Expiry is short (default 15 minutes, at most one hour). S3 servers check signatures and expiry themselves;
:func:`verify_s3_presigned` repeats both checks for S3-compatible servers that do not (moto accepts tampered
and expired URLs) and for gateways that front a bucket.
"""

from __future__ import annotations

import datetime as _dt
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from cyxwiz.errors import PresignError, ValidationError
from cyxwiz.storage import layout
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.model import ENC_NONE, ObjectInfo

if TYPE_CHECKING:
    from cyxwiz.storage.s3 import S3ObjectStore

DEFAULT_EXPIRY = 900
MAX_EXPIRY = 3600
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class PresignedRequest:
    """One HTTP request a node may make. Send ``headers`` exactly as given; check ``sha256`` on GET."""

    method: str
    url: str
    key: str
    expires_at: _dt.datetime
    sha256: str | None = None
    size: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "url": self.url,
            "key": self.key,
            "expires_at": self.expires_at.isoformat(),
            "sha256": self.sha256,
            "size": self.size,
            "headers": dict(self.headers),
        }


class Presigner(Protocol):
    def presign_get(self, key: str, *, expires_in: int = DEFAULT_EXPIRY) -> PresignedRequest: ...

    def presign_put(
        self, key: str, *, sha256: str, size: int, expires_in: int = DEFAULT_EXPIRY
    ) -> PresignedRequest: ...


def check_expiry(expires_in: int) -> int:
    if not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_EXPIRY:
        raise ValidationError(f"expiry must be 1..{MAX_EXPIRY} seconds", field="expires_in", rule="C3")
    return expires_in


def check_content(sha256: str, size: int) -> None:
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise ValidationError("sha256 must be 64 lower-case hex digits", field="sha256", rule="D3")
    if not isinstance(size, int) or size < 0:
        raise ValidationError("size must be a non-negative integer", field="size", rule="D3")


def check_job_scope(key: str, *, job_id: str, method: str) -> None:
    """GET only under the job's inputs, PUT only under its outputs (C3); anything else is PresignError."""
    layout.validate_key(key)
    prefix = {"GET": layout.job_inputs_prefix, "PUT": layout.job_outputs_prefix}.get(method.upper())
    if prefix is None:
        raise PresignError(f"method {method!r} is not presignable", field="method", rule="C3")
    if not key.startswith(prefix(job_id)):
        raise PresignError(
            f"{method.upper()} of {key!r} is outside job {job_id!r}'s {prefix(job_id)}", path=key, rule="C3"
        )


def presign_job_inputs(
    presigner: Presigner, job_id: str, names: Sequence[str], *, expires_in: int = DEFAULT_EXPIRY
) -> dict[str, PresignedRequest]:
    """GET URLs for the named inputs of one job, keyed by name."""
    out: dict[str, PresignedRequest] = {}
    for name in names:
        key = layout.job_input(job_id, name)
        check_job_scope(key, job_id=job_id, method="GET")
        out[name] = presigner.presign_get(key, expires_in=expires_in)
    return out


def presign_job_output(
    presigner: Presigner,
    job_id: str,
    name: str,
    *,
    sha256: str,
    size: int,
    expires_in: int = DEFAULT_EXPIRY,
) -> PresignedRequest:
    """A PUT URL for one output of one job, bound to the content the node declared."""
    key = layout.job_output(job_id, name)
    check_job_scope(key, job_id=job_id, method="PUT")
    return presigner.presign_put(key, sha256=sha256, size=size, expires_in=expires_in)


def sealed_info(key: str, sha256: str, size: int, master: MasterKey | None) -> ObjectInfo:
    """Metadata a presigned PUT must carry: unencrypted, hashes as declared, tagged by the store's key."""
    return ObjectInfo(
        key=key, sha256=sha256, size=size, stored_sha256=sha256, stored_size=size, encryption=ENC_NONE
    ).signed(master)


# -- S3 -------------------------------------------------------------------------------------------------


class S3Presigner:
    """Presigns through boto3 (SigV4 query auth) with the store's credentials."""

    def __init__(self, *, store: S3ObjectStore, clock: type[_dt.datetime] = _dt.datetime) -> None:
        self.store = store
        self._clock = clock

    def _expires_at(self, expires_in: int) -> _dt.datetime:
        return self._clock.now(_dt.UTC) + _dt.timedelta(seconds=expires_in)

    def presign_get(self, key: str, *, expires_in: int = DEFAULT_EXPIRY) -> PresignedRequest:
        check_expiry(expires_in)
        info = self.store.head(key)  # exists, and its metadata is ours
        if info.encrypted:
            raise PresignError(
                "client-side encrypted objects are never handed to nodes (they do not hold the master key)",
                path=key,
                rule="D2",
            )
        url = self.store.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.store.bucket, "Key": self.store.prefix + key},
            ExpiresIn=expires_in,
        )
        return PresignedRequest(
            method="GET",
            url=url,
            key=key,
            expires_at=self._expires_at(expires_in),
            sha256=info.sha256,
            size=info.size,
        )

    def presign_put(
        self, key: str, *, sha256: str, size: int, expires_in: int = DEFAULT_EXPIRY
    ) -> PresignedRequest:
        from cyxwiz.storage.s3 import b64_sha256

        layout.validate_key(key)
        check_expiry(expires_in)
        check_content(sha256, size)
        info = sealed_info(key, sha256, size, self.store.master_key)
        metadata = info.to_metadata()
        params: dict[str, object] = {
            "Bucket": self.store.bucket,
            "Key": self.store.prefix + key,
            "ChecksumSHA256": b64_sha256(sha256),
            "ContentLength": size,
            "Metadata": metadata,
        }
        headers = {"content-length": str(size), "x-amz-checksum-sha256": b64_sha256(sha256)}
        headers.update({f"x-amz-meta-{k}": v for k, v in metadata.items()})
        if self.store.sse is not None:
            params["ServerSideEncryption"] = self.store.sse
            headers["x-amz-server-side-encryption"] = self.store.sse
        if self.store.kms_key_id:
            params["SSEKMSKeyId"] = self.store.kms_key_id
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.store.kms_key_id
        url = self.store.client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in)
        return PresignedRequest(
            method="PUT",
            url=url,
            key=key,
            expires_at=self._expires_at(expires_in),
            sha256=sha256,
            size=size,
            headers=headers,
        )


def verify_s3_presigned(
    store: S3ObjectStore,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    now: _dt.datetime | None = None,
) -> str:
    """Check a presigned S3 request as S3 itself would: signature over method, path, query and signed
    headers with the store's credentials, and expiry. Returns the object key. Raises PresignError."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    try:
        signature = query["X-Amz-Signature"]
        stamp = query["X-Amz-Date"]
        expires = int(query["X-Amz-Expires"])
        signed = query["X-Amz-SignedHeaders"].split(";")
        credential = query["X-Amz-Credential"]
        issued = _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.UTC)
    except (KeyError, ValueError):
        raise PresignError("not a SigV4 presigned URL", field="url", rule="C3") from None
    if query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or not 1 <= expires <= 604800:
        raise PresignError("unsupported presigned URL", field="url", rule="C3")
    current = now or _dt.datetime.now(_dt.UTC)
    if current > issued + _dt.timedelta(seconds=expires):
        raise PresignError("presigned URL has expired", field="url", rule="C3")
    if current < issued - _dt.timedelta(minutes=5):
        raise PresignError("presigned URL is dated in the future", field="url", rule="C3")
    credentials = store.credentials()
    if credentials is None or not credential.startswith(f"{credentials.access_key}/"):
        raise PresignError(
            "presigned URL was not issued with this store's credentials", field="url", rule="C3"
        )
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in signed if h != "host" and h not in lowered]
    if missing:
        raise PresignError(f"signed headers missing from the request: {missing}", field="headers", rule="C3")
    unsigned_query = "&".join(p for p in parts.query.split("&") if not p.startswith("X-Amz-Signature="))
    request = AWSRequest(
        method=method.upper(),
        url=parts._replace(query=unsigned_query).geturl(),
        headers={h: lowered[h] for h in signed if h != "host"},
    )
    request.context["timestamp"] = stamp
    region = credential.split("/")[2] if credential.count("/") >= 4 else (store.region or "us-east-1")
    auth = S3SigV4QueryAuth(credentials, "s3", region, expires=expires)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if not hmac.compare_digest(expected, signature):
        raise PresignError("presigned URL signature does not match (tampered)", field="url", rule="C3")
    path = unquote(parts.path)
    bucket_prefix = f"/{store.bucket}/"
    object_path = path[len(bucket_prefix) :] if path.startswith(bucket_prefix) else path.lstrip("/")
    if not object_path.startswith(store.prefix):
        raise PresignError("presigned URL is outside this store", field="url", rule="C3")
    return object_path[len(store.prefix) :]
