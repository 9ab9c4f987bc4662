"""The one dataset validator attacked (SPEC G1, G2, D3, threat DoS): each refusal names its field and rule,
creates nothing, and sits beside a positive control."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import pytest

from cyxwiz.datasets import ModelShape, parse_dataset, validate_dataset
from cyxwiz.datasets.checks import DatasetLimits
from cyxwiz.datasets.sources import DatasetSources
from cyxwiz.errors import AuthorizationError, ValidationError
from tests.datasets.conftest import SHAPE, World, csv_bytes, npz, sha, table


def validate(
    world: World, value: dict[str, Any], *, user: str = "alice", shape: ModelShape | None = SHAPE
) -> Any:
    spec = parse_dataset(value, job_type="model" if shape is not None else "script")
    return validate_dataset(spec, sources=world.sources, user=user, shape=shape)


def refused(
    world: World,
    value: dict[str, Any],
    *,
    field: str,
    rule: str,
    match: str | None = None,
    error: type[Exception] = ValidationError,
    **kwargs: Any,
) -> None:
    before = [i.key for i in world.store.list("")]
    with pytest.raises(error, match=match) as caught:
        validate(world, value, **kwargs)
    assert (caught.value.field, caught.value.rule) == (field, rule), caught.value  # type: ignore[attr-defined]
    assert [i.key for i in world.store.list("")] == before, "a refusal stores nothing"


def test_positive_controls_npz_csv_file_and_store(world: World) -> None:
    x, y = table()
    checked = validate(world, world.put(npz(x=x, y=y)))
    assert len(checked.data) == 60 and checked.data.x.dtype == np.float32
    checked = validate(world, {**world.put(csv_bytes(x, y), name="d.csv"), "label_column": "target"})
    np.testing.assert_allclose(checked.data.x, x, rtol=1e-6)
    ref = world.file(npz(X=x, y=y))
    assert validate(world, ref).data_sha256 == ref["sha256"]


def test_hash_mismatch_is_refused(world: World) -> None:
    """D3: the content must match the spec's SHA-256 (a tampered or swapped file)."""
    x, y = table()
    ref = world.put(npz(x=x, y=y))
    refused(world, {**ref, "sha256": sha(b"something else")}, field="dataset.sha256", rule="D3")


@pytest.mark.parametrize(
    ("arrays", "field", "rule", "match"),
    [
        (
            {"x": np.zeros((60, 5), np.float32), "y": np.zeros(60, np.int64)},
            "model.input_shape",
            "G2",
            "shape",
        ),
        ({"x": np.zeros((60, 4), np.float32), "y": np.full(60, 3)}, "task.num_classes", "G2", "3 classes"),
        ({"x": np.zeros((60, 4), np.float32), "y": np.full(60, -1)}, "task.num_classes", "G2", "labels"),
        ({"x": np.zeros((60, 4), np.float32), "y": np.zeros(60, np.float32)}, "dataset.y", "G1", "integers"),
        ({"x": np.zeros((60, 4), np.complex64), "y": np.zeros(60, np.int64)}, "dataset.x", "G1", "real"),
        ({"x": np.array([["a"] * 4] * 60), "y": np.zeros(60, np.int64)}, "dataset.x", "G1", "real"),
        ({"x": np.zeros((60, 4), np.float32), "y": np.zeros(59, np.int64)}, "dataset", "G1", "rows"),
        ({"x": np.zeros((60, 4), np.float32), "y": np.zeros((60, 2), np.int64)}, "dataset.y", "G1", "1-D"),
        ({"x": np.zeros((5, 4), np.float32), "y": np.zeros(5, np.int64)}, "dataset", "G1", "at least"),
        ({"x": np.zeros((60, 4)), "y": np.zeros(60, np.int64), "z": np.zeros(1)}, "dataset", "G1", "exactly"),
        ({"y": np.zeros(60, np.int64)}, "dataset", "G1", "exactly"),
    ],
)
def test_npz_content_rules(world: World, arrays: dict[str, Any], field: str, rule: str, match: str) -> None:
    refused(world, world.put(npz(**arrays)), field=field, rule=rule, match=match)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_nan_inf_and_float32_overflow_are_refused(world: World, bad: float) -> None:
    x, y = table()
    x = x.astype(np.float64)
    x[7, 2] = bad
    refused(world, world.put(npz(x=x, y=y)), field="dataset.x", rule="G1", match="row 7")


def test_empty_and_truncated_npz_are_refused(world: World) -> None:
    x, y = table()
    data = npz(x=x, y=y)
    refused(world, world.file(b"", "empty.npz"), field="dataset", rule="G1", match="empty")
    refused(world, world.put(data[: len(data) // 2]), field="dataset", rule="G1", match="truncated")
    refused(world, world.put(b"not a zip at all"), field="dataset", rule="G1", match="npz")


def test_pickled_object_array_is_refused_without_running_it(world: World) -> None:
    """A .npz member that is a pickle would be code: refused, never unpickled."""
    _, y = table()
    objects = np.array([{"a": 1}] * 60, dtype=object)
    refused(world, world.put(npz(x=objects, y=y)), field="dataset", rule="G1", match="pickle")


def test_npz_header_claiming_more_data_than_the_member_is_refused(world: World) -> None:
    """DoS: a .npy header declaring a huge shape must not make the trusted side allocate it."""
    _, y = table()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 4)}
        )
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
        member = io.BytesIO()
        np.save(member, y)
        archive.writestr("y.npy", member.getvalue())
    refused(world, world.put(buffer.getvalue()), field="dataset", rule="G1", match="declares")


def test_npz_that_unpacks_beyond_the_limit_is_refused(world: World) -> None:
    """A zip bomb: a small compressed archive whose arrays would fill memory."""
    big = np.zeros((2_000_000, 4), np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=big, y=np.zeros(2_000_000, np.int64))
    assert len(buffer.getvalue()) < 1 << 20
    world.sources = DatasetSources(store=world.store, limits=DatasetLimits(max_unpacked_bytes=8 << 20))
    refused(world, world.put(buffer.getvalue()), field="dataset", rule="G1", match="unpack")


def test_row_and_byte_limits(world: World) -> None:
    x, y = table(200)
    data = npz(x=x, y=y)
    world.sources = DatasetSources(store=world.store, limits=DatasetLimits(max_rows=100))
    refused(world, world.put(data), field="dataset", rule="G1", match="more than 100 rows")
    world.sources = DatasetSources(store=world.store, limits=DatasetLimits(max_bytes=len(data) - 1))
    refused(world, world.put(data), field="dataset", rule="G1", match="limit")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("f0,f1,f2,f3,target\n1,2,3,4,0\n" * 1 + "1,2,3,4,1\n" * 20 + "1,2,3", "truncated"),
        ("f0,f1,f2,f3,target\n" + "1,2,3,x,1\n" * 20, "not a number"),
        ("f0,f1,f2,f3,target\n" + "1,2,3,4,1.5\n" * 20, "not an integer"),
        ("f0,f1,f2,f3,label\n" + "1,2,3,4,1\n" * 20, "no column 'target'"),
        ("f0,f0,f2,f3,target\n" + "1,2,3,4,1\n" * 20, "repeat"),
        ("f0,f1,f2,f3,target\n", "at least"),
        ("\ufeff", "empty"),
        ("f0,f1,f2,f3,target\n" + "1,2,3,4,1\n" * 20 + "1,2,\x00,4,1\n", "NUL"),
    ],
)
def test_csv_rules(world: World, text: str, match: str) -> None:
    ref = {**world.put(text.encode(), name="d.csv"), "label_column": "target"}
    field = "dataset.label_column" if match in ("not an integer", "no column 'target'") else "dataset"
    refused(world, ref, field=field, rule="G1", match=match)


def test_csv_nan_and_label_range(world: World) -> None:
    x, y = table()
    x[3, 1] = np.nan
    ref = {**world.put(csv_bytes(x, y), name="d.csv"), "label_column": "target"}
    refused(world, ref, field="dataset.x", rule="G1", match="NaN")
    x, y = table()
    ref = {**world.put(csv_bytes(x, y + 1), name="e.csv"), "label_column": "target"}
    refused(world, ref, field="task.num_classes", rule="G2")


def test_store_reads_stay_in_the_callers_area(world: World) -> None:
    """C2: a job may name only its own user's uploads in the control plane's store — not another user's,
    not a job's inputs, not a holdout (the trusted side would otherwise ship them to a node)."""
    x, y = table()
    data = npz(x=x, y=y)
    theirs = world.put(data, user="bob")
    refused(world, theirs, field="dataset.uri", rule="C2", error=AuthorizationError, user="alice")
    for key in ("holdout/job-1/holdout.npz", "jobs/job-1/inputs/dataset.npz", "users/alice-x/d.npz"):
        world.store.put_bytes(key, data)
        ref = {"uri": f"s3://cyxwiz/{key}", "sha256": sha(data)}
        refused(world, ref, field="dataset.uri", rule="C2", error=AuthorizationError, user="alice")
    assert len(validate(world, theirs, user="bob").data) == 60  # the owner reads it


def test_file_uris_are_development_only_and_confined(world: World, tmp_path: Any) -> None:
    x, y = table()
    data = npz(x=x, y=y)
    ref = world.file(data)
    outside = tmp_path / "secret.npz"
    outside.write_bytes(data)
    refused(
        world, {**ref, "uri": f"file://{outside}"}, field="dataset.uri", rule="G1", error=AuthorizationError
    )
    (world.files / "link.npz").symlink_to(outside)
    link = {**ref, "uri": f"file://{world.files / 'link.npz'}"}
    refused(world, link, field="dataset.uri", rule="G1", error=AuthorizationError, match="outside")
    world.sources = DatasetSources(store=world.store)  # production: no file roots
    refused(world, ref, field="dataset.uri", rule="G1", match="development only")


def test_s3_outside_the_store_needs_an_allowed_bucket(world: World) -> None:
    x, y = table()
    data = npz(x=x, y=y)
    world.sources = DatasetSources(store=world.store, s3_buckets=frozenset({"team-data"}))
    ref = {"uri": "s3://other-bucket/d.npz", "sha256": sha(data)}
    refused(world, ref, field="dataset.uri", rule="G1", error=AuthorizationError, match="not an allowed")


def test_script_jobs_take_any_file_but_still_check_hash_and_emptiness(world: World) -> None:
    """A script job's code reads its /input file as it is: only access, size, emptiness and hash apply."""
    ref = {**world.put(b"any bytes the user's code reads", name="d.bin"), "format": "raw"}
    assert validate(world, ref, shape=None).data_sha256 == ref["sha256"]
    refused(world, {**ref, "sha256": sha(b"x")}, field="dataset.sha256", rule="D3", shape=None)
