"""Fixtures for the sandbox tests: usable backends (bubblewrap; docker/gvisor against a real dockerd
started here when none runs) and a helper to run Python in a fresh sandbox."""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.sandbox import JobLimits, SandboxResult, get_backend, run_sandboxed
from cyxwiz.sandbox.bubblewrap import BubblewrapBackend

REPO = Path(__file__).resolve().parents[2]
DAEMON_CONFIG = REPO / "infra" / "sandbox" / "daemon.json"
_counter = itertools.count()


@pytest.fixture(scope="session")
def bwrap_usable() -> None:
    ok, why = BubblewrapBackend().probe()
    if not ok:
        pytest.skip(f"bubblewrap cannot run here: {why}")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_previous_daemon() -> None:
    """A dockerd that is still shutting down keeps its pid file: a new one would refuse to start."""
    try:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
    except (OSError, ValueError):
        return
    end = time.monotonic() + 30
    while _pid_alive(pid) and not _docker_answers() and time.monotonic() < end:
        time.sleep(0.5)


def _start_dockerd() -> subprocess.Popen[bytes]:
    log_path = Path("/tmp/cyxwiz-dockerd.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["dockerd", "--config-file", str(DAEMON_CONFIG)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    end = time.monotonic() + 60
    while not _docker_answers() and time.monotonic() < end:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            pytest.skip(f"dockerd exited with {proc.returncode}: {' '.join(tail)}")
        time.sleep(0.5)
    if not _docker_answers():
        _stop_dockerd(proc)
        pytest.skip(f"dockerd did not answer within 60 s (see {log_path})")
    return proc


def _stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets dockerd stop its containers and the containerd it started; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[None]:
    """A real dockerd: the running one (left as found), else one started here (root + apt's docker.io)
    and stopped, with its containerd, when the session ends (issue 15: a test run leaves nothing)."""
    started: subprocess.Popen[bytes] | None = None
    if not _docker_answers():
        if shutil.which("dockerd") is None:
            pytest.skip("dockerd is not installed (apt's docker.io)")
        if os.geteuid() != 0:
            pytest.skip("dockerd is not running and only root can start it here")
        # Several suites may race to start it: one at a time, re-checking under the lock.
        with open("/tmp/cyxwiz-dockerd.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _wait_for_previous_daemon()
            if not _docker_answers():
                started = _start_dockerd()
    try:
        yield
    finally:
        if started is not None:
            _stop_dockerd(started)


def _backend_fixture(name: str) -> None:
    ok, why = get_backend(name).probe()
    if not ok:
        pytest.skip(f"{name} backend unusable here: {why}")


BACKENDS = [
    "bubblewrap",
    pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.slow]),
    pytest.param("gvisor", marks=[pytest.mark.docker, pytest.mark.slow]),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "bubblewrap":
        request.getfixturevalue("bwrap_usable")
    else:
        request.getfixturevalue("dockerd")
        _backend_fixture(name)
    return name


RunPy = Callable[..., SandboxResult]


def _runner(tmp_path: Path, backend: str) -> RunPy:
    def run(code: str, *, limits: JobLimits | None = None, **kw: Any) -> SandboxResult:
        workdir = tmp_path / f"job{next(_counter)}"
        return run_sandboxed(
            argv=["python", "-c", code],
            workdir=workdir,
            limits=limits or JobLimits(wall_seconds=60),
            backend=backend,
            **kw,
        )

    return run


@pytest.fixture
def run_py(tmp_path: Path, bwrap_usable: None) -> RunPy:
    """run_py(code, limits=..., **kw) -> SandboxResult of `python -c code` in a fresh bubblewrap sandbox."""
    return _runner(tmp_path, "bubblewrap")


@pytest.fixture
def run_any(tmp_path: Path, backend: str) -> RunPy:
    """Like run_py, on every backend this host can run (parametrized)."""
    return _runner(tmp_path, backend)
