"""Fixtures for the object-store tests: real backends and a raw handle to tamper with them directly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cyxwiz.storage import LocalObjectStore, MasterKey
from cyxwiz.storage.base import BaseObjectStore
from cyxwiz.storage.s3 import S3ObjectStore


@dataclass
class Harness:
    """A store plus raw access to its bucket/directory, bypassing every check (the attacker's view)."""

    name: str
    store: BaseObjectStore
    raw_get: Callable[[str], tuple[bytes, dict[str, str]]]
    raw_put: Callable[[str, bytes, dict[str, str]], None]
    reopen: Callable[[MasterKey | None], BaseObjectStore]


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.generate()


#: Small sizes so that tests cross chunk and streaming boundaries with little data.
CHUNK = 4096
INLINE = 64 * 1024


def local_harness(root: Path, master_key: MasterKey) -> Harness:
    store = LocalObjectStore(root=root, master_key=master_key, chunk_size=CHUNK, inline_limit=INLINE)

    def raw_get(key: str) -> tuple[bytes, dict[str, str]]:
        meta = json.loads((root / "meta" / f"{key}.json").read_text())
        return store.body_path(key).read_bytes(), meta

    def raw_put(key: str, body: bytes, meta: dict[str, str]) -> None:
        path = store.body_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        meta_path = root / "meta" / f"{key}.json"
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta))

    return Harness(
        "local",
        store,
        raw_get,
        raw_put,
        lambda key: LocalObjectStore(root=root, master_key=key, chunk_size=CHUNK, inline_limit=INLINE),
    )


@pytest.fixture
def local_store(tmp_path: Path, master_key: MasterKey) -> LocalObjectStore:
    return LocalObjectStore(root=tmp_path / "store", master_key=master_key)


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server in its own process on a loopback port; tests talk to it over HTTP with boto3."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    env = {
        **os.environ,
        # Small parts so that multipart uploads of a few hundred KiB have several parts (AWS: 5 MiB).
        "S3_UPLOAD_PART_MIN_SIZE": str(INLINE),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield MotoServer(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_s3_store(
    server: MotoServer, bucket: str, master_key: MasterKey | None, **kwargs: object
) -> S3ObjectStore:
    store = S3ObjectStore(
        bucket=bucket,
        master_key=master_key,
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        **{"chunk_size": CHUNK, "part_size": INLINE, **kwargs},  # type: ignore[arg-type]
    )
    store.ensure_bucket()
    return store


@pytest.fixture
def s3_bucket() -> str:
    return f"cyxwiz-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_store(moto_server: MotoServer, s3_bucket: str, master_key: MasterKey) -> S3ObjectStore:
    return make_s3_store(moto_server, s3_bucket, master_key)


@pytest.fixture
def s3_harness(moto_server: MotoServer, s3_bucket: str, s3_store: S3ObjectStore) -> Harness:
    client = s3_store.client

    def raw_get(key: str) -> tuple[bytes, dict[str, str]]:
        answer = client.get_object(Bucket=s3_bucket, Key=key)
        return answer["Body"].read(), dict(answer["Metadata"])

    def raw_put(key: str, body: bytes, meta: dict[str, str]) -> None:
        client.put_object(Bucket=s3_bucket, Key=key, Body=body, Metadata=meta)

    return Harness(
        "s3",
        s3_store,
        raw_get,
        raw_put,
        lambda key: make_s3_store(moto_server, s3_bucket, key),
    )


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, master_key: MasterKey) -> Iterator[Harness]:
    if request.param == "local":
        yield local_harness(tmp_path / "store", master_key)
    else:
        yield request.getfixturevalue("s3_harness")
