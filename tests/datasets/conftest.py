"""Fixtures of the dataset tests: a real local object store with a user's area, and dataset builders."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cyxwiz.datasets import DatasetSources, ModelShape
from cyxwiz.storage import LocalObjectStore, MasterKey

#: The model the tests' data must fit: 4 features, 3 classes.
SHAPE = ModelShape(input_shape=(4,), input_dtype="float32", num_classes=3)


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def table(rows: int = 60, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 4)).astype(np.float32), rng.integers(0, 3, size=rows)


def csv_bytes(x: np.ndarray, y: np.ndarray, *, label: str = "target") -> bytes:
    lines = [",".join([f"f{i}" for i in range(x.shape[1])] + [label])]
    lines += [",".join([repr(float(v)) for v in row] + [str(int(t))]) for row, t in zip(x, y, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class World:
    store: LocalObjectStore
    sources: DatasetSources
    files: Path

    def put(self, data: bytes, *, user: str = "alice", name: str = "d.npz") -> dict[str, Any]:
        """Store ``data`` in ``user``'s area (as an upload would) and return the spec's dataset mapping."""
        key = f"users/{user}/datasets/{name}"
        self.store.put_bytes(key, data)
        return {"uri": f"s3://cyxwiz/{key}", "sha256": sha(data)}

    def file(self, data: bytes, name: str = "d.npz") -> dict[str, Any]:
        path = self.files / name
        path.write_bytes(data)
        return {"uri": f"file://{path}", "sha256": sha(data)}


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.generate())
    files = tmp_path / "files"
    files.mkdir()
    sources = DatasetSources.from_env({"CYXWIZ_DATASET_FILE_ROOTS": str(files)}, store=store)
    return World(store=store, sources=sources, files=files)
