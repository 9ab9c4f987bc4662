"""Fixtures for the object-store tests: real backends and a raw handle to tamper with them directly."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cyxwiz.storage import LocalObjectStore, MasterKey
from cyxwiz.storage.base import BaseObjectStore


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


@pytest.fixture(params=["local"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, master_key: MasterKey) -> Iterator[Harness]:
    if request.param == "local":
        yield local_harness(tmp_path / "store", master_key)
    else:
        yield request.getfixturevalue("s3_harness")
