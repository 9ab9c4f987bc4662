"""Hypothesis fuzzing of the reader/verifier on corrupted files (H4): never an uncaught exception, always
a clear report; and any change at all to the open day's bytes is reported."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyxwiz.audit.query import EventFilter, query
from cyxwiz.audit.verify import VerifyReport, verify_log
from tests.audit.conftest import TEST_KEY, ManualClock, build_log

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datetime import UTC, datetime

    root = tmp_path_factory.mktemp("pristine") / "audit"
    build_log(root, ManualClock(datetime(2026, 11, 20, tzinfo=UTC)), TEST_KEY, days=2, per_day=6)
    return root


def _copy(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(pristine, target)
    return target


def _assert_clear(report: VerifyReport) -> None:
    for problem in report.problems:
        assert problem.file and problem.message
        assert str(problem).startswith(problem.file)
    json.dumps(report.to_dict())


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 400)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=200)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("swap"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("dupline"), st.integers(0, 50), st.integers(0, 50)),
)


def _mutate(data: bytes, ops: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for op, a, b in ops:
        pos = a % (len(buf) + 1)
        if op == "flip" and buf:
            buf[pos % len(buf)] ^= int(b)  # type: ignore[call-overload]
        elif op == "delete":
            del buf[pos : pos + int(b)]  # type: ignore[call-overload]
        elif op == "insert":
            buf[pos:pos] = bytes(b)  # type: ignore[call-overload]
        elif op == "truncate":
            del buf[pos:]
        elif op in ("swap", "dupline"):
            lines = bytes(buf).splitlines(keepends=True)
            if lines:
                i, j = a % len(lines), int(b) % len(lines)  # type: ignore[call-overload]
                if op == "swap":
                    lines[i], lines[j] = lines[j], lines[i]
                else:
                    lines.insert(j, lines[i])
                buf = bytearray(b"".join(lines))
    return bytes(buf)


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_any_change_to_the_open_day_is_reported(
    pristine: Path, tmp_path: Path, ops: list[tuple[str, int, object]]
) -> None:
    root = _copy(pristine, tmp_path)
    target = root / "audit-2026-11-21.jsonl"
    original = target.read_bytes()
    mutated = _mutate(original, ops)
    target.write_bytes(mutated)
    report = verify_log(root, public_key=TEST_KEY.public_key())
    _assert_clear(report)
    assert report.ok == (mutated == original)
    single = verify_log(target, public_key=TEST_KEY.public_key())  # the lone-file mode must not crash either
    _assert_clear(single)
    query(root, EventFilter(), errors=[])


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=3), compressed=st.booleans())
def test_corrupted_closed_day_is_reported(
    pristine: Path, tmp_path: Path, ops: list[tuple[str, int, object]], compressed: bool
) -> None:
    root = _copy(pristine, tmp_path)
    target = root / "audit-2026-11-20.jsonl.gz"
    original = gzip.decompress(target.read_bytes())
    if compressed:  # damage the gzip stream itself
        packed = _mutate(target.read_bytes(), ops)
        target.write_bytes(packed)
        changed = packed != (pristine / target.name).read_bytes()
    else:
        mutated = _mutate(original, ops)
        target.write_bytes(gzip.compress(mutated, mtime=0))
        changed = mutated != original
    report = verify_log(root, public_key=TEST_KEY.public_key())
    _assert_clear(report)
    if changed and not compressed:
        assert not report.ok
    query(root, EventFilter(), errors=[])


@FUZZ
@given(
    digest=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    ),
    keep_keys=st.booleans(),
)
def test_garbage_digest_files_are_reported(
    pristine: Path, tmp_path: Path, digest: object, keep_keys: bool
) -> None:
    root = _copy(pristine, tmp_path)
    path = root / "audit-2026-11-20.digest.json"
    if keep_keys and isinstance(digest, dict):
        digest = {**json.loads(path.read_bytes()), **digest}
    path.write_text(json.dumps(digest))
    report = verify_log(root, public_key=TEST_KEY.public_key())
    _assert_clear(report)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_any_log_file(tmp_path: Path, data: bytes) -> None:
    root = tmp_path / "rand"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for name in (
        "audit-2026-11-20.jsonl.gz",
        "audit-2026-11-20.digest.json",
        "audit-2026-11-21.jsonl",
        ".head",
    ):
        (root / name).write_bytes(data)
    report = verify_log(root, public_key=TEST_KEY.public_key())
    _assert_clear(report)
    query(root, EventFilter(), errors=[])
