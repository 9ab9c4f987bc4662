"""A local Prefect server (SQLite) for the embedded default: ``make demo`` and the end-to-end tests.

Started as its own process group so that stopping it also stops the uvicorn workers it forks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LocalPrefectServer:
    api_url: str
    ui_url: str
    home: Path
    pid: int

    def env(self) -> dict[str, str]:
        """Settings a client process needs to talk to this server."""
        return prefect_env(self.home, self.api_url)


#: Prefect client retries (backoff 2, 4, ... 128 s): a connected client rides out an API outage of about
#: 4 min (a Prefect server restart on a loaded host) instead of failing the lifecycle's task and refunding
#: a job the node finished (issue 21; docs/chaos.md). Prefect's default, 5, covers about 1 min.
CLIENT_MAX_RETRIES = 7


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_CLIENT_MAX_RETRIES": str(CLIENT_MAX_RETRIES),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_CLI_PROMPT": "false",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
        # The UI needs its API URL spelled out on any port but 4200 (ARCHITECTURE.md).
        env["PREFECT_UI_API_URL"] = api_url
    return env


@contextlib.contextmanager
def local_prefect_server(
    home: Path,
    *,
    port: int | None = None,
    timeout: float = 120.0,
    host: str = "127.0.0.1",
    database_url: str | None = None,
) -> Iterator[LocalPrefectServer]:
    """Run ``prefect server start`` until the block exits: on loopback and SQLite unless ``host`` and
    ``database_url`` (``postgresql+asyncpg://...``, the multi-host harness) say otherwise. Clients on this
    host always use the loopback URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **prefect_env(home, api_url)}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    env.pop("PREFECT_API_KEY", None)
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(api_url, proc, timeout=timeout, log_path=home / "server.log")
        yield LocalPrefectServer(api_url=api_url, ui_url=f"http://127.0.0.1:{port}", home=home, pid=proc.pid)
    finally:
        stop_process_group(proc)
        log.close()


def _wait_healthy(api_url: str, proc: subprocess.Popen[bytes], *, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout:.0f} s")


def stop_process_group(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    # The leader gone, what is left of its group would outlive it: an agent's flow run that handles SIGTERM
    # by reporting through the agent's tunnel, now dead, retries for minutes. Stopped with the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
