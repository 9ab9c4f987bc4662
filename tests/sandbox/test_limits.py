"""JobLimits validation (SPEC E2): defaults, ranges, types, unknown keys, ceilings."""

from __future__ import annotations

import pytest

from cyxwiz.errors import ValidationError
from cyxwiz.sandbox.limits import GiB, JobLimits, MiB, parse_size


def test_defaults_are_spec_e2() -> None:
    lim = JobLimits()
    assert lim.memory_bytes == 16 * GiB
    assert lim.cpu_cores == 4
    assert lim.gpu_memory_bytes == 8 * GiB
    assert lim.wall_seconds == 3600
    assert lim.output_bytes == 1 * GiB
    assert lim.disk_bytes == 50 * GiB
    assert lim.pids > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_bytes", 1),
        ("memory_bytes", -5),
        ("memory_bytes", True),
        ("memory_bytes", 1.5),
        ("cpu_cores", 0),
        ("cpu_cores", float("nan")),
        ("cpu_cores", float("inf")),
        ("wall_seconds", 0),
        ("pids", 1),
        ("output_bytes", -1),
        ("gpus", 65),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        JobLimits(**{field: value})  # type: ignore[arg-type]
    assert err.value.field == field
    assert err.value.rule == "E2"


def test_unknown_key_refused() -> None:
    with pytest.raises(ValidationError, match="unknown limit"):
        JobLimits.from_mapping({"memory_bytes": 64 * MiB, "memroy_bytes": 1})


def test_from_mapping_roundtrip() -> None:
    lim = JobLimits(memory_bytes=64 * MiB, pids=64)
    assert JobLimits.from_mapping(lim.to_dict()) == lim


def test_within_ceiling() -> None:
    JobLimits(memory_bytes=GiB).within(JobLimits())
    with pytest.raises(ValidationError) as err:
        JobLimits(memory_bytes=32 * GiB).within(JobLimits())
    assert err.value.field == "memory_bytes"


@pytest.mark.parametrize(("text", "expected"), [("16G", 16 * GiB), ("512MiB", 512 * MiB), ("1024", 1024)])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_refuses_garbage() -> None:
    with pytest.raises(ValidationError):
        parse_size("lots")
