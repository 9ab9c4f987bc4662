"""The ``cyxwiz-sandbox`` Prefect worker: the node agent.

It is a process worker whose flow runs (``sandboxed-train``) run the user's code inside the sandbox. The
hardening is the worker's, not the deployment's: job variables can pick a backend the node allows and
narrow limits, but the command, the environment and the sandbox policy are forced here (SPEC E1–E3), so a
deployment cannot add capabilities, network or a writable root.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio.abc
from prefect.utilities.processutils import command_to_string, get_sys_executable
from prefect.workers.process import (
    ProcessJobConfiguration,
    ProcessVariables,
    ProcessWorker,
    ProcessWorkerResult,
)
from pydantic import Field

from agents.settings import AgentSettings

if TYPE_CHECKING:
    from uuid import UUID

    import httpx
    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse

#: Environment a flow run may inherit from the worker; everything else (cloud credentials, tokens of other
#: runs, PYTHONPATH tricks) is dropped.
_INHERITED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "VIRTUAL_ENV",
    "PREFECT_HOME",
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",  # the node's session token for the gateway (same node, same trust)
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_LOGGING_LEVEL",
)
#: The header the gateway wants on every call on a job's flow run (SPEC B1, C3).
JOB_TOKEN_HEADER = "X-Cyxwiz-Job-Token"  # noqa: S105 (a header name)
_FLOW_RUN_PATH = re.compile(r"/flow_runs/([0-9a-fA-F-]{36})(?:/|$)")
#: Job tokens of recent runs kept for the worker's own calls on them (pending, pid, crashed...).
_RECENT_RUNS = 256

#: Keys a deployment may set in job variables ``env``; anything else is refused, not silently dropped.
_ALLOWED_JOB_ENV_PREFIX = "CYXWIZ_JOB_"


class CyxwizSandboxVariables(ProcessVariables):
    """What a deployment may choose. There is deliberately no field for network, capabilities or mounts."""

    sandbox_backend: Literal["bubblewrap", "docker", "gvisor"] | None = Field(
        default=None,
        description="Sandbox backend; must be one the node allows. None = the node's default.",
    )
    memory_mb: int | None = Field(default=None, ge=64, description="Memory limit, capped by the node policy.")
    wall_seconds: int | None = Field(default=None, ge=1, description="Wall-time limit, capped by the node.")


class CyxwizSandboxJobConfiguration(ProcessJobConfiguration):
    sandbox_backend: str | None = Field(default=None)
    memory_mb: int | None = Field(default=None)
    wall_seconds: int | None = Field(default=None)

    def prepare_for_flow_run(  # noqa: PLR0917 - Prefect's signature
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        requested = dict(self.env)
        refused = sorted(
            key
            for key in requested
            if not key.startswith(_ALLOWED_JOB_ENV_PREFIX) and not key.startswith("PREFECT__")
        )
        if refused:
            raise ValueError(f"job variables env: keys {refused} are not allowed (SPEC E1: node policy)")
        self.command = None
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id)
        from agents.credentials import current_settings

        # A flow run starts under the node's current certificate (after renewals) and keeps it.
        settings = current_settings(AgentSettings.from_env())
        policy_env = settings.policy_env(
            backend=self.sandbox_backend, memory_mb=self.memory_mb, wall_seconds=self.wall_seconds
        )
        base = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
        flow_env = {k: v for k, v in self.env.items() if k.startswith(("PREFECT__", _ALLOWED_JOB_ENV_PREFIX))}
        self.env = {**base, **flow_env, **settings.node_env(), **policy_env}
        # The command is forced: the Prefect engine, from the node's own interpreter.
        self.command = command_to_string([get_sys_executable(), "-m", "prefect.engine"])
        self._command_configured = True
        self.stream_output = True


class CyxwizSandboxWorker(ProcessWorker):
    """Node agent worker: ``prefect worker start --pool gpu --type cyxwiz-sandbox``."""

    type = "cyxwiz-sandbox"
    job_configuration = CyxwizSandboxJobConfiguration
    job_configuration_variables = CyxwizSandboxVariables  # type: ignore[assignment]
    _description = (
        "Runs cyxwiz training jobs in a hardened sandbox (bubblewrap, Docker or gVisor) on a GPU node; "
        "the node authenticates with its mTLS certificate and fetches a per-job token for each run."
    )
    _display_name = "cyxwiz sandbox"
    _documentation_url = "https://example.invalid/cyxwiz#agent"

    # --- job tokens ---------------------------------------------------------------------------------
    # The gateway refuses a call on a job's flow run without that job's token. The worker makes such calls
    # itself (pending, infrastructure pid, crashed) and its flow-run processes make the rest, so the token
    # is fetched over mTLS when the run is picked up, attached to the worker's own calls on that run by an
    # httpx hook, and handed to the flow-run process as a Prefect client header.

    _job_tokens: OrderedDict[str, str]

    async def setup(self) -> None:
        await super().setup()
        self._job_tokens = OrderedDict()
        self.client._client.event_hooks["request"].append(self._attach_job_token)

    async def _attach_job_token(self, request: httpx.Request) -> None:
        found = _FLOW_RUN_PATH.search(request.url.path)
        token = self._job_tokens.get(found.group(1).lower()) if found else None
        if token is not None:
            request.headers[JOB_TOKEN_HEADER] = token

    async def _job_token(self, flow_run: FlowRun) -> str | None:
        run_id = str(flow_run.id).lower()
        if run_id in self._job_tokens:
            return self._job_tokens[run_id]
        settings = AgentSettings.from_env()
        job_id = str((flow_run.parameters or {}).get("job_id", ""))
        if not job_id or not settings.coordinator_url:
            return None
        import anyio.to_thread

        from agents.node_client import fetch_job_token

        # The job token never travels in flow-run parameters: fetched here over mTLS (SPEC B1, D1).
        token = await anyio.to_thread.run_sync(fetch_job_token, settings, job_id)
        self._job_tokens[run_id] = token
        while len(self._job_tokens) > _RECENT_RUNS:
            self._job_tokens.popitem(last=False)
        return token

    async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
        from cyxwiz.errors import CyxwizError

        try:
            await self._job_token(flow_run)
        except CyxwizError as exc:
            # No token, no run: the coordinator says this node does not hold the job (any more).
            self.get_flow_run_logger(flow_run).error("job token refused: %s", exc.message)
            return False
        return await super()._propose_pending_state(flow_run)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        settings = AgentSettings.from_env()
        token = await self._job_token(flow_run)
        if token is not None:
            configuration.env["CYXWIZ_JOB_TOKEN"] = token
            configuration.env["PREFECT_CLIENT_CUSTOM_HEADERS"] = json.dumps({JOB_TOKEN_HEADER: token})
        workdir = settings.work_root / str(flow_run.id)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        configuration.working_dir = Path(workdir)
        if token is None:
            return await super().run(flow_run, configuration, task_status)
        # Prefect runs each flow run under its own executor context whose clients (state proposer,
        # cancellation manager) are made inside this call: they carry the job token as a client header.
        # Settings are a context variable, so other runs of this worker are not affected.
        from prefect.settings import get_current_settings, temporary_settings

        headers = {**get_current_settings().client.custom_headers, JOB_TOKEN_HEADER: token}
        with temporary_settings(updates={"client.custom_headers": headers}):
            return await super().run(flow_run, configuration, task_status)

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        return super().get_default_base_job_template()
