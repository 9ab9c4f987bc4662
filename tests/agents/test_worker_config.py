"""The worker forces hardening: a deployment's job variables cannot change the command or smuggle env."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.schemas.objects import FlowRun

from agents.worker import CyxwizSandboxJobConfiguration, CyxwizSandboxWorker


def _flow_run() -> FlowRun:
    return FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="r", parameters={"job_id": "j1"})


def test_worker_type_is_registered_through_the_collection_entry_point() -> None:
    from prefect.plugins import load_prefect_collections
    from prefect.utilities.dispatch import lookup_type
    from prefect.workers.base import BaseWorker

    assert "cyxwiz" in load_prefect_collections()
    assert lookup_type(BaseWorker, "cyxwiz-sandbox") is CyxwizSandboxWorker


def test_variables_offer_no_network_capability_or_mount_fields() -> None:
    schema = CyxwizSandboxWorker.get_default_base_job_template()["variables"]["properties"]
    assert {"sandbox_backend", "memory_mb", "wall_seconds"} <= set(schema)
    for forbidden in ("network_mode", "cap_add", "privileged", "volumes", "read_only", "security_opt"):
        assert forbidden not in schema


def test_command_is_forced_and_env_is_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("CYXWIZ_SANDBOX_MAX_MEMORY_MB", "1024")
    config = CyxwizSandboxJobConfiguration(
        command="bash -c 'curl evil'", env={"CYXWIZ_JOB_TAG": "x"}, memory_mb=10**6
    )
    config.prepare_for_flow_run(_flow_run())
    assert config.command is not None
    assert config.command.endswith("-m prefect.engine")
    assert "AWS_SECRET_ACCESS_KEY" not in config.env
    assert config.env["CYXWIZ_JOB_TAG"] == "x"
    assert config.env["CYXWIZ_SANDBOX_MEMORY_MB"] == "1024"


@pytest.mark.parametrize("key", ["LD_PRELOAD", "PYTHONPATH", "CYXWIZ_SANDBOX_BACKEND", "PREFECT_API_URL"])
def test_job_env_outside_the_allow_list_is_refused(key: str) -> None:
    config = CyxwizSandboxJobConfiguration(env={key: "x"})
    with pytest.raises(ValueError, match="not allowed"):
        config.prepare_for_flow_run(_flow_run())
