"""Behaviour every backend shares: round trips, verified reads, tamper refusals (SPEC D2, D3).

Each test runs against the local directory store and against S3 (moto's server on loopback, over HTTP).
Tampering goes straight to the bucket / directory, as an attacker holding storage credentials would.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyxwiz.errors import ConfigError, DecryptionError, IntegrityError, NotFoundError, ValidationError
from cyxwiz.storage import MasterKey, ObjectStore, layout
from tests.storage.conftest import INLINE, Harness

J1 = "job-00000000000000000001"  # canonical job ids (cyxwiz.ids.JOB_ID)
J2 = "job-00000000000000000002"  # canonical job ids (cyxwiz.ids.JOB_ID)

KEY = layout.job_output(J1, "model.safetensors")
OTHER = layout.job_output(J1, "metrics.json")


def _flip(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


@pytest.mark.parametrize("encrypt", [False, True])
def test_put_get_round_trip(harness: Harness, encrypt: bool) -> None:
    store = harness.store
    assert isinstance(store, ObjectStore)
    data = os.urandom(1000)
    info = store.put_bytes(KEY, data, encrypt=encrypt)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == 1000
    assert info.encrypted is encrypt
    assert store.get_bytes(KEY) == data
    assert store.head(KEY).sha256 == info.sha256
    raw, meta = harness.raw_get(KEY)
    assert (data in raw) is not encrypt  # the bucket alone holds no plaintext of encrypted objects
    assert meta["cyxwiz-sha256"] == info.sha256


@pytest.mark.parametrize("encrypt", [False, True])
def test_put_file_streams_large_files(harness: Harness, tmp_path: Path, encrypt: bool) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(3 * INLINE + 123)
    src.write_bytes(data)
    seen: list[tuple[int, int]] = []
    info = harness.store.put_file(KEY, src, encrypt=encrypt, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (info.stored_size, info.stored_size)
    dest = tmp_path / "out.bin"
    got = harness.store.get_file(KEY, dest)
    assert dest.read_bytes() == data and got.sha256 == hashlib.sha256(data).hexdigest()
    assert oct(dest.stat().st_mode & 0o777) == oct(0o600)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=0, max_value=4 * INLINE + 10), encrypt=st.booleans())
def test_round_trip_property(harness: Harness, tmp_path: Path, size: int, encrypt: bool) -> None:
    # Sizes from 0 bytes to several multipart parts (the S3 harness uses INLINE-sized parts).
    data = os.urandom(size)
    src = tmp_path / f"in-{size}"
    src.write_bytes(data)
    harness.store.put_file(KEY, src, encrypt=encrypt)
    assert harness.store.get_bytes(KEY) == data
    dest = tmp_path / f"out-{size}"
    harness.store.get_file(KEY, dest)
    assert dest.read_bytes() == data


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_flipped_byte_is_refused(harness: Harness, tmp_path: Path, encrypt: bool, where: str) -> None:
    data = os.urandom(2 * INLINE)
    harness.store.put_bytes(KEY, data, encrypt=encrypt)
    body, meta = harness.raw_get(KEY)
    at = {"start": 0, "middle": len(body) // 2, "end": len(body) - 1}[where]
    harness.raw_put(KEY, _flip(body, at), meta)
    with pytest.raises(IntegrityError, match="do not match their SHA-256") as err:
        harness.store.get_bytes(KEY)
    assert err.value.path == KEY and err.value.rule == "D3"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(IntegrityError):
        harness.store.get_file(KEY, downloads / "out")
    assert list(downloads.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("encrypt", [False, True])
def test_swapped_bodies_are_refused(harness: Harness, encrypt: bool) -> None:
    harness.store.put_bytes(KEY, b"weights-A" * 10, encrypt=encrypt)
    harness.store.put_bytes(OTHER, b"metrics-B" * 10, encrypt=encrypt)
    body_a, meta_a = harness.raw_get(KEY)
    body_b, meta_b = harness.raw_get(OTHER)
    harness.raw_put(KEY, body_b, meta_a)
    harness.raw_put(OTHER, body_a, meta_b)
    for key in (KEY, OTHER):
        with pytest.raises(IntegrityError, match="do not match"):
            harness.store.get_bytes(key)


@pytest.mark.parametrize("encrypt", [False, True])
def test_swapped_objects_with_metadata_are_refused(harness: Harness, encrypt: bool) -> None:
    # Moving body *and* metadata together defeats a plain hash check; the keyed tag binds the key.
    harness.store.put_bytes(KEY, b"weights-A" * 10, encrypt=encrypt)
    harness.store.put_bytes(OTHER, b"metrics-B" * 10, encrypt=encrypt)
    body_a, meta_a = harness.raw_get(KEY)
    body_b, meta_b = harness.raw_get(OTHER)
    harness.raw_put(KEY, body_b, meta_b)
    harness.raw_put(OTHER, body_a, meta_a)
    with pytest.raises(IntegrityError, match="tag does not match"):
        harness.store.get_bytes(KEY)


def test_rewritten_body_with_recomputed_hashes_is_refused(harness: Harness) -> None:
    harness.store.put_bytes(KEY, b"honest model")
    _, meta = harness.raw_get(KEY)
    evil = b"evil model!!"
    digest = hashlib.sha256(evil).hexdigest()
    meta = {**meta, "cyxwiz-sha256": digest, "cyxwiz-stored-sha256": digest}
    harness.raw_put(KEY, evil, meta)
    with pytest.raises(IntegrityError, match="tag does not match"):
        harness.store.get_bytes(KEY)


def test_object_written_outside_the_store_is_refused(harness: Harness) -> None:
    harness.raw_put(KEY, b"dropped in by hand", {})
    with pytest.raises(IntegrityError, match="no valid cyxwiz metadata"):
        harness.store.get_bytes(KEY)


def test_wrong_master_key_is_refused(harness: Harness) -> None:
    harness.store.put_bytes(KEY, b"secret weights", encrypt=True)
    other = harness.reopen(MasterKey.generate())
    with pytest.raises(IntegrityError, match="tag"):
        other.get_bytes(KEY)  # the tag is checked first: metadata not written under this key


def test_wrong_data_key_is_refused(harness: Harness) -> None:
    # Keep the intact metadata and tag but splice another object's (valid) wrapped data key in the body:
    # the stored hash then differs, so restore it as an attacker with the master key's MAC could not.
    harness.store.put_bytes(KEY, b"A" * 100, encrypt=True)
    harness.store.put_bytes(OTHER, b"B" * 100, encrypt=True)
    body_a, _ = harness.raw_get(KEY)
    body_b, _ = harness.raw_get(OTHER)
    spliced = body_a[:16] + body_b[16:76] + body_a[76:]
    store = harness.store
    assert store.master_key is not None
    info = store.head(KEY)
    from dataclasses import replace

    forged = replace(info, stored_sha256=hashlib.sha256(spliced).hexdigest()).signed(store.master_key)
    harness.raw_put(KEY, spliced, forged.to_metadata())
    with pytest.raises(DecryptionError):
        store.get_bytes(KEY)


def test_encrypted_object_needs_the_master_key(harness: Harness) -> None:
    harness.store.put_bytes(KEY, b"secret", encrypt=True)
    keyless = harness.reopen(None)
    with pytest.raises(DecryptionError, match="no master key"):
        keyless.get_bytes(KEY)
    with pytest.raises(ConfigError) as err:
        keyless.put_bytes(OTHER, b"x", encrypt=True)
    assert err.value.field == "master_key"


def test_missing_and_bad_keys(harness: Harness) -> None:
    with pytest.raises(NotFoundError):
        harness.store.get_bytes(layout.job_output(J1, "nope"))
    with pytest.raises(ValidationError):
        harness.store.put_bytes("jobs/../etc/passwd", b"x")
    with pytest.raises(ValidationError, match="manifests are written by the store"):
        harness.store.put_bytes(layout.job_manifest(J1), b"{}")


def test_list_delete_and_manifest(harness: Harness) -> None:
    store = harness.store
    store.put_bytes(layout.job_input(J1, "data.npz"), b"data")
    store.put_bytes(KEY, b"model", encrypt=True)
    store.put_bytes(layout.job_output(J2, "model"), b"other job")
    keys = [i.key for i in store.list(layout.job_prefix(J1))]
    assert keys == [layout.job_input(J1, "data.npz"), layout.job_manifest(J1), KEY]
    manifest = store.read_manifest(layout.job_manifest(J1))
    assert set(manifest) == {layout.job_input(J1, "data.npz"), KEY}
    store.delete(KEY)
    assert set(store.read_manifest(layout.job_manifest(J1))) == {layout.job_input(J1, "data.npz")}
    with pytest.raises(NotFoundError):
        store.head(KEY)


def test_verify_reports_every_problem(harness: Harness) -> None:
    store = harness.store
    prefix = layout.job_prefix(J1)
    store.put_bytes(layout.job_input(J1, "data.npz"), b"data")
    store.put_bytes(KEY, b"model", encrypt=True)
    store.put_bytes(OTHER, b"metrics")
    report = store.verify(prefix)
    assert report.ok and len(report.checked) == 3
    body, meta = harness.raw_get(KEY)
    harness.raw_put(KEY, _flip(body, 5), meta)  # altered
    harness.raw_put(layout.job_output(J1, "extra"), b"x", {})  # planted
    report = store.verify(prefix)
    assert not report.ok
    codes = {(p.key, p.code) for p in report.problems}
    assert (KEY, "integrity") in codes
    assert (layout.job_output(J1, "extra"), "integrity") in codes


def test_verify_finds_missing_and_forged_manifest(harness: Harness) -> None:
    store = harness.store
    store.put_bytes(KEY, b"model")
    store.put_bytes(OTHER, b"metrics")
    # Delete OTHER behind the store's back: the manifest still lists it.
    store._remove(OTHER)
    report = store.verify(layout.job_prefix(J1))
    assert [(p.key, p.code) for p in report.problems] == [(OTHER, "missing")]
    # Rewrite the manifest to hide the deletion: its MAC refuses it.
    manifest_key = layout.job_manifest(J1)
    mbody, mmeta = harness.raw_get(manifest_key)
    forged = mbody.replace(OTHER.encode(), f"jobs/{J1}/outputs/zzzz".encode())
    digest = hashlib.sha256(forged).hexdigest()
    harness.raw_put(manifest_key, forged, {**mmeta, "cyxwiz-sha256": digest, "cyxwiz-stored-sha256": digest})
    report = store.verify(layout.job_prefix(J1))
    assert (manifest_key, "integrity") in {(p.key, p.code) for p in report.problems}
