"""Local directory backend specifics: file modes, atomic writes, from_env (SPEC D2)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cyxwiz.errors import ConfigError, IntegrityError, StorageError
from cyxwiz.storage import LocalObjectStore, MasterKey, layout

J1 = "job-000000000000000000a1"  # canonical job ids (cyxwiz.ids.JOB_ID)


def test_files_are_private(local_store: LocalObjectStore) -> None:
    key = layout.job_output(J1, "model")
    local_store.put_bytes(key, b"weights", encrypt=True)
    body = local_store.body_path(key)
    assert stat.S_IMODE(body.stat().st_mode) == 0o600
    assert stat.S_IMODE(body.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(local_store.root.stat().st_mode) == 0o700


def test_temporary_files_are_invisible(local_store: LocalObjectStore) -> None:
    key = layout.job_output(J1, "model")
    local_store.put_bytes(key, b"w")
    (local_store.body_path(key).parent / ".model.123.tmp").write_bytes(b"partial")
    assert [i.key for i in local_store.list(f"jobs/{J1}/outputs/")] == [key]


def test_failed_stream_leaves_nothing(local_store: LocalObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "grows.bin"
    src.write_bytes(b"x" * (local_store.inline_limit + 10))
    key = layout.job_output(J1, "model")
    original = local_store._second_pass

    def growing(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        with src.open("ab") as fh:
            fh.write(b"more")  # the file changes between the hashing pass and the upload pass
        return original(*args, **kwargs)  # type: ignore[arg-type]

    local_store._second_pass = growing  # type: ignore[method-assign]
    with pytest.raises(IntegrityError, match="changed while"):
        local_store.put_file(key, src)
    assert local_store.list("jobs/") == []
    assert [p.name for p in local_store.body_path(key).parent.iterdir()] == []


def test_key_cannot_be_file_and_prefix(local_store: LocalObjectStore) -> None:
    local_store.put_bytes("blobs/a/b", b"x")
    with pytest.raises(StorageError):
        local_store.put_bytes("blobs/a", b"y")


def test_missing_metadata_is_integrity_error(local_store: LocalObjectStore) -> None:
    key = layout.job_output(J1, "model")
    local_store.put_bytes(key, b"w")
    (local_store.root / "meta" / f"{key}.json").unlink()
    with pytest.raises(IntegrityError, match="no metadata"):
        local_store.get_bytes(key)


def test_from_env(tmp_path: Path) -> None:
    key = MasterKey.generate()
    key_file = tmp_path / "master.key"
    key.write(key_file)
    store = LocalObjectStore.from_env(
        {"CYXWIZ_STORE_ROOT": str(tmp_path / "s"), "CYXWIZ_STORE_MASTER_KEY_FILE": str(key_file)}
    )
    assert store.master_key is not None and store.master_key.key_id == key.key_id
    with pytest.raises(ConfigError):
        LocalObjectStore.from_env({})
