"""Fixtures for the sandbox tests: a usable bubblewrap backend and a helper to run Python in it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.sandbox import JobLimits, SandboxResult, run_sandboxed
from cyxwiz.sandbox.bubblewrap import BubblewrapBackend

_counter = itertools.count()


@pytest.fixture(scope="session")
def bwrap_usable() -> None:
    ok, why = BubblewrapBackend().probe()
    if not ok:
        pytest.skip(f"bubblewrap cannot run here: {why}")


RunPy = Callable[..., SandboxResult]


@pytest.fixture
def run_py(tmp_path: Path, bwrap_usable: None) -> RunPy:
    """run_py(code, limits=..., **kw) -> SandboxResult of `python -c code` in a fresh bubblewrap sandbox."""

    def run(code: str, *, limits: JobLimits | None = None, **kw: Any) -> SandboxResult:
        workdir = tmp_path / f"job{next(_counter)}"
        return run_sandboxed(
            argv=["python", "-c", code], workdir=workdir, limits=limits or JobLimits(wall_seconds=60), **kw
        )

    return run
