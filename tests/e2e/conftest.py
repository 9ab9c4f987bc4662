"""Whole-system fixtures: the project deployed to a real Prefect server and a real node agent process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local_server import LocalPrefectServer, stop_process_group
from infra.stack import prefect_cli
from tests.e2e.lifecycle_conftest import QUICK_POLL

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deployed(prefect_server: LocalPrefectServer) -> dict[str, str]:
    """``prefect --no-prompt deploy --all`` of prefect.yaml, after creating the work pools it names."""
    env = {**os.environ, **prefect_server.env(), "CYXWIZ_PROJECT_DIR": str(PROJECT)}
    prefect_cli("work-pool", "create", "gpu", "--type", "cyxwiz-sandbox", "--overwrite", env=env)
    prefect_cli("work-pool", "create", "control", "--type", "process", "--overwrite", env=env)
    output = prefect_cli("--no-prompt", "deploy", "--all", env=env)
    return {"output": output}


@pytest.fixture
def node_agent(
    prefect_server: LocalPrefectServer, deployed: dict[str, str], tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``cyxwiz-sandbox`` worker process polling the default queue of the gpu pool."""
    env = {
        **os.environ,
        **prefect_server.env(),
        "CYXWIZ_PROJECT_DIR": str(PROJECT),
        "CYXWIZ_NODE_NAME": "node-e2e",
        "CYXWIZ_WORK_ROOT": str(tmp_path / "agent"),
        "CYXWIZ_SANDBOX_MAX_MEMORY_MB": "768",
        **QUICK_POLL,
    }
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            "gpu",
            "--type",
            "cyxwiz-sandbox",
            "--work-queue",
            "default",
        ],
        env=env,
        cwd=PROJECT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_process_group(proc)
        log.close()
