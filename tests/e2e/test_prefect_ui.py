"""The Prefect UI of the kept demo stack, read by headless Chromium as a person would see it (issue 16).

The stack deploys every deployment of prefect.yaml and runs a control worker (what ``cyxwiz demo --keep``
does); a lifecycle run is started through the Prefect API (``run_deployment``) with a spec the user's own
wallet funded. Headless Debian ``chromium`` then renders the deployments page (lifecycle and maintenance
deployments Ready) and that run's task runs and artifacts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.lifecycle_conftest import tiny_job

pytestmark = [pytest.mark.slow, pytest.mark.prefect, pytest.mark.timeout(1200)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAINTENANCE = ("crl-refresh", "escrow-sweep", "audit-maintenance", "signing-key-rotation")


def _dump(url: str, profile: Path, *, must_show: str) -> str:
    """The DOM after the single-page app rendered (fresh profile, no network beyond loopback); a page still
    loading its data under load is read again, with more virtual time."""
    assert CHROMIUM is not None
    dom = ""
    for attempt, budget in enumerate((20000, 40000, 60000)):
        proc = subprocess.run(
            [
                CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}-{attempt}", f"--virtual-time-budget={budget}",
                "--dump-dom", url,
            ],
            capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        dom = proc.stdout
        if must_show in dom:
            break
    return dom


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from infra.stack import embedded_stack
    from tasks import services

    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (infra/install-system-deps.sh installs it)")
    saved = dict(os.environ)
    del tmp_path_factory
    home = Path(tempfile.mkdtemp(prefix="cyxui-", dir="/tmp"))  # short: the node's bridge socket path
    try:
        with embedded_stack(home, say=lambda _m: None, nodes=("node-1",), deploy_all=True) as stack:
            stack.start_agent("node-1")
            stack.start_control_worker()
            stack.wait_for_node("node-1")
            yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
        services.reset()
        shutil.rmtree(home, ignore_errors=True)


def _deployment_status(names: tuple[str, ...], *, timeout: float = 240) -> dict[str, str]:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            found = {d.name: str(d.status.value if d.status else "") for d in client.read_deployments()}
        if all(found.get(n) == "READY" for n in names) or time.monotonic() > deadline:
            return found
        time.sleep(2)


def test_ui_shows_ready_deployments_and_a_lifecycle_runs_graph_and_artifacts(
    kept: Any, tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment

    wanted = ("job-lifecycle", *MAINTENANCE)
    status = _deployment_status(wanted)
    assert all(status.get(n) == "READY" for n in wanted), status  # the control worker polls their queue
    spec = kept.fund(tiny_job(epochs=1, wall_seconds=120))
    flow_run = run_deployment(
        "job-lifecycle/job-lifecycle", parameters={"spec": spec, "node": "node-1"}, timeout=900
    )
    assert flow_run.state is not None and flow_run.state.is_final(), flow_run.state  # type: ignore[union-attr]
    run_id, job_id = str(flow_run.id), spec["job_id"]  # type: ignore[union-attr]
    ui = kept.prefect.ui_url
    deployments = _dump(f"{ui}/deployments", tmp_path / "p1", must_show="escrow-sweep")
    for name in wanted:
        assert name in deployments, name
    assert "Ready" in deployments
    # The run's page renders; its graph is drawn (WebGL) from graph-v2, which the same server serves.
    page = _dump(f"{ui}/runs/flow-run/{run_id}", tmp_path / "p2", must_show=flow_run.name)  # type: ignore[union-attr]
    assert flow_run.name in page  # type: ignore[union-attr]
    graph = httpx.get(f"{kept.prefect.api_url}/flow_runs/{run_id}/graph-v2", timeout=30).json()
    labels = " ".join(node["label"] for _id, node in graph["nodes"])
    for task in ("validate-job-spec", "lock-escrow", "dispatch", "run-on-node", "verify-result"):
        assert task in labels, (task, labels)
    keys = {a.get("key") for a in graph["artifacts"]}  # the run's own: the lifecycle summary table
    keys |= {a.get("key") for _id, node in graph["nodes"] for a in node.get("artifacts") or []}
    assert {f"job-{job_id}", f"verification-{job_id}"} <= keys, keys
    artifacts = _dump(f"{ui}/artifacts", tmp_path / "p3", must_show=f"job-{job_id}")
    assert f"job-{job_id}" in artifacts and f"verification-{job_id}" in artifacts
