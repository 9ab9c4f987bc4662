"""``prefect deploy --all`` and a deployment run through a real cyxwiz-sandbox worker (issue 9 acceptance)."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(300)]


def test_deploy_all_registers_every_deployment(deployed: dict[str, str]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = {d.name for d in client.read_deployments()}
    assert {
        "node-healthcheck",
        "sandboxed-train",
        "job-lifecycle",
        "crl-refresh",
        "escrow-sweep",
        "audit-maintenance",
        "signing-key-rotation",
        "certificate-expiry-watch",
    } <= names
    with get_client(sync_client=True) as client:
        scheduled = {d.name for d in client.read_deployments() if d.schedules}
    assert {"crl-refresh", "escrow-sweep", "audit-maintenance"} <= scheduled


def test_deployment_runs_on_the_node_agent_with_forced_policy(node_agent: subprocess.Popen[bytes]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    flow_run = run_deployment("node-healthcheck/node-healthcheck", timeout=180)
    assert flow_run.state is not None
    assert flow_run.state.is_completed(), flow_run.state
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    health = [a for a in artifacts if a.key == "node-health"]
    assert health, "the node's health report artifact is missing"
    data = health[0].data
    table = json.loads(data) if isinstance(data, str) else data
    rows = {row["check"]: row["value"] for row in table}
    assert rows["node"] == "node-e2e"
    assert rows["sandbox_backend"] == "bubblewrap"
    assert rows["memory_limit_mb"] == "768"
