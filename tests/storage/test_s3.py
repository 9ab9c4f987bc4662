"""S3 backend specifics against moto's S3 server on loopback, over HTTP with boto3 (SPEC D2, D3)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from botocore.exceptions import ConnectionClosedError

from cyxwiz.errors import ConfigError, IntegrityError, NotFoundError, StorageError
from cyxwiz.storage import MasterKey, S3ObjectStore, layout
from cyxwiz.storage.s3 import b64_sha256
from tests.storage.conftest import INLINE, MotoServer, make_s3_store

J1 = "job-00000000000000000001"  # canonical job ids (cyxwiz.ids.JOB_ID)

KEY = layout.job_output(J1, "model")


def test_single_put_sends_sha256_and_requests_sse(s3_store: S3ObjectStore) -> None:
    data = b"weights" * 100
    info = s3_store.put_bytes(KEY, data, encrypt=True)
    raw = s3_store.head_raw(KEY)
    assert raw["ServerSideEncryption"] == "AES256"  # D2: server-side encryption on top
    assert raw["ChecksumSHA256"] == b64_sha256(info.stored_sha256)  # the server holds our hash
    assert raw["Metadata"]["cyxwiz-enc"] == "aes256gcm-stream-v1"


def test_sse_kms_by_config(moto_server: MotoServer, s3_bucket: str, master_key: MasterKey) -> None:
    store = make_s3_store(
        moto_server, s3_bucket, master_key, sse="aws:kms", kms_key_id="alias/cyxwiz-archive"
    )
    store.put_bytes(KEY, b"x")
    raw = store.head_raw(KEY)
    assert raw["ServerSideEncryption"] == "aws:kms"
    assert raw["SSEKMSKeyId"].endswith("alias/cyxwiz-archive")


def test_multipart_upload_with_part_checksums(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "big"
    data = os.urandom(3 * INLINE + 5)
    src.write_bytes(data)
    seen: list[int] = []
    info = s3_store.put_file(KEY, src, progress=lambda done, total: seen.append(done))
    assert seen == [INLINE, 2 * INLINE, 3 * INLINE, 3 * INLINE + 5]  # one report per part
    # A composite checksum: SHA-256 over the parts' SHA-256s, suffixed with the part count.
    raw = s3_store.head_raw(KEY)
    parts = [data[i : i + INLINE] for i in range(0, len(data), INLINE)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).hexdigest()
    assert raw["ChecksumSHA256"].split("-")[0] == b64_sha256(composite)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_store.get_bytes(KEY) == data


def test_failed_multipart_upload_is_aborted(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 * INLINE))
    original = s3_store._second_pass

    def changing(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        with src.open("r+b") as fh:
            fh.write(b"changed!")  # the file changes between hashing and uploading
        return original(*args, **kwargs)  # type: ignore[arg-type]

    s3_store._second_pass = changing  # type: ignore[method-assign]
    with pytest.raises(IntegrityError, match="changed while"):
        s3_store.put_file(KEY, src)
    assert s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []
    with pytest.raises(NotFoundError):
        s3_store.head(KEY)


def test_parts_are_retried_with_backoff(
    moto_server: MotoServer, s3_bucket: str, master_key: MasterKey, tmp_path: Path
) -> None:
    # Fault injection through botocore's own event hooks: the first four sends of each part fail as a
    # dropped connection would; the part-level retry (5 attempts, exponential backoff) gets them through.
    s3_store = make_s3_store(moto_server, s3_bucket, master_key, request_attempts=1, backoff_base=0.001)
    failures: dict[str, int] = {}

    def drop(request: object, **_: object) -> None:
        url = str(getattr(request, "url", ""))
        failures[url] = failures.get(url, 0) + 1
        if failures[url] <= 4:
            raise ConnectionClosedError(endpoint_url=url)

    s3_store.client.meta.events.register("before-send.s3.UploadPart", drop)
    src = tmp_path / "big"
    data = os.urandom(2 * INLINE + 1)
    src.write_bytes(data)
    s3_store.put_file(KEY, src)
    assert len(failures) == 3 and all(n == 5 for n in failures.values())
    assert s3_store.get_bytes(KEY) == data


def test_retries_give_up_with_a_storage_error(
    moto_server: MotoServer, s3_bucket: str, master_key: MasterKey
) -> None:
    def drop(request: object, **_: object) -> None:
        raise ConnectionClosedError(endpoint_url="x")

    s3_store = make_s3_store(
        moto_server, s3_bucket, master_key, request_attempts=1, max_attempts=2, backoff_base=0.001
    )
    s3_store.client.meta.events.register("before-send.s3.PutObject", drop)
    with pytest.raises(StorageError, match="unreachable"):
        s3_store.put_bytes(KEY, b"x")


def test_prefix_isolates_stores(moto_server: MotoServer, s3_bucket: str, master_key: MasterKey) -> None:
    a = make_s3_store(moto_server, s3_bucket, master_key, prefix="tenant-a")
    b = make_s3_store(moto_server, s3_bucket, master_key, prefix="tenant-b/")
    a.put_bytes(KEY, b"a")
    assert [i.key for i in a.list("jobs/")] == [layout.job_manifest(J1), KEY]
    assert b.list("jobs/") == []
    assert a.client.head_object(Bucket=s3_bucket, Key=f"tenant-a/{KEY}")["ContentLength"] == 1


def test_from_env(moto_server: MotoServer, s3_bucket: str, master_key: MasterKey) -> None:
    env = {
        "CYXWIZ_S3_BUCKET": s3_bucket,
        "CYXWIZ_S3_ENDPOINT_URL": moto_server.endpoint_url,
        "CYXWIZ_S3_REGION": moto_server.region,
        "CYXWIZ_S3_SSE": "none",
        "CYXWIZ_STORE_MASTER_KEY": master_key._key.hex(),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update({k: env[k] for k in old})
    try:
        store = S3ObjectStore.from_env(env)
        store.ensure_bucket()
        store.put_bytes(KEY, b"x", encrypt=True)
        assert store.get_bytes(KEY) == b"x"
        assert "ServerSideEncryption" not in store.head_raw(KEY)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with pytest.raises(ConfigError) as err:
        S3ObjectStore.from_env({})
    assert err.value.field == "CYXWIZ_S3_BUCKET"
    with pytest.raises(ConfigError) as err:
        S3ObjectStore.from_env({"CYXWIZ_S3_BUCKET": "b", "CYXWIZ_S3_SSE": "rot13"})
    assert err.value.field == "sse"


def test_missing_bucket_is_a_config_error(moto_server: MotoServer, master_key: MasterKey) -> None:
    store = S3ObjectStore(
        bucket="no-such-bucket-here",
        master_key=master_key,
        endpoint_url=moto_server.endpoint_url,
        region=moto_server.region,
        access_key_id="testing",
        secret_access_key="testing",
    )
    with pytest.raises(ConfigError, match="does not exist"):
        store.put_bytes("blobs/x", b"x")
