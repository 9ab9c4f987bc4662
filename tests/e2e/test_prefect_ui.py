"""The Prefect UI of the kept demo stack, read by headless Chromium as a person would see it (issue 16).

The stack deploys every deployment of prefect.yaml and runs a control worker (what ``cyxwiz demo --keep``
does); a lifecycle run is started through the Prefect API (``run_deployment``) with a spec the user's own
wallet funded. Headless Debian ``chromium`` then renders the deployments page (lifecycle and maintenance
deployments Ready) and that run's logs, task runs and artifacts; the maintenance schedules made their runs,
and the control worker runs one.
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

from tests.e2e.lifecycle_conftest import QUICK_POLL, tiny_job, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ci, pytest.mark.prefect, pytest.mark.timeout(1200)]

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
            stack.env.update(QUICK_POLL)
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
    # The run's own log lines reached the API at INFO (the stack keeps Prefect's chatter at WARNING) ...
    wanted = (f"job {job_id} of", "escrow locked for", "dispatched to", "verification of", "archived")

    def logged() -> list[str]:  # the worker's flow-run process ships its logs in batches: the last may lag
        found = _run_logs(run_id)
        return found if all(any(w in m for m in found) for w in wanted) else []

    assert wait_until(logged, timeout=60, interval=1.0), (wanted, _run_logs(run_id))
    # (what the run page's default tab, Logs, reads: POST /api/logs/filter). The run's page renders; its
    # graph is drawn (WebGL) from graph-v2, which the same server serves.
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


def _run_logs(flow_run_id: str) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def _upcoming(client: Any, deployment_id: Any) -> list[Any]:
    """The runs the server's scheduler made from a deployment's schedule, not yet started."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
    )
    return [r for r in runs if r.auto_scheduled]


def test_maintenance_schedules_make_runs_the_control_worker_runs(kept: Any) -> None:
    """Entry point (2): each maintenance deployment's schedule made its upcoming runs on the server, and
    the control worker runs one: the next ``escrow-sweep`` the schedule made, brought forward to now (its
    interval is 5 min; the wait is Prefect's clock, not ours), completes."""
    import datetime as dt

    from prefect import get_client
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        ids = {d.name: d.id for d in client.read_deployments()}

        def scheduled() -> dict[str, list[Any]]:
            found = {name: _upcoming(client, ids[name]) for name in MAINTENANCE}
            return found if all(found.values()) else {}

        upcoming = wait_until(scheduled, timeout=180, interval=2.0)  # the scheduler loops every 60 s
        assert upcoming, {name: len(_upcoming(client, ids[name])) for name in MAINTENANCE}
        sweep = min(upcoming["escrow-sweep"], key=lambda r: r.expected_start_time)
        client.set_flow_run_state(sweep.id, Scheduled(scheduled_time=dt.datetime.now(dt.UTC)), force=True)

        def ended() -> Any:
            state = client.read_flow_run(sweep.id).state
            return state if state is not None and state.is_final() else None

        state = wait_until(ended, timeout=300, interval=2.0)
    assert state is not None and state.is_completed(), state


def test_the_blocks_catalog_offers_every_cyxwiz_block_type(kept: Any) -> None:
    """The kept stack registered every block type of ``blocks`` (the UI's catalog offers each) and saved
    the control plane's ``default`` block, which its flows load."""
    from prefect import get_client

    import blocks

    with get_client(sync_client=True) as client:
        slugs = {t.slug for t in client.read_block_types()}
        saved = client.read_block_document_by_name("default", "cyxwiz-control-plane")
    assert {getattr(blocks, name).get_block_type_slug() for name in blocks.__all__} <= slugs, slugs
    assert saved.block_type is not None and saved.block_type.slug == "cyxwiz-control-plane"
