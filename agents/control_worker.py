"""The control worker: a process worker that takes no code and no environment from the Prefect API.

The worker on the ``control`` pool runs as the account that holds the ledger passphrase, the escrow keys
and the store master key. The Prefect API credential, which the coordinator and the gateway also hold
(open-source Prefect has no per-client permissions), can create deployments and flow runs on that pool and
set their job variables. A plain process worker would run whatever such a run names: a ``command`` or
``env`` job variable (a shell line, ``PYTHONPATH``), a deployment's other entrypoint or pull steps (a git
clone of anyone's code), a deployment nobody registered. Any of these turns the API credential into the
control account's keys (issue 17; SPEC F1, C3, I).

:class:`ControlWorker` runs only what the project itself declares: the deployments of this checkout's
``prefect.yaml`` on its pool, by name, with the entrypoint declared there, the project's own pull step (or
none), and no job variable beyond the logging levels prefect.yaml sets. Anything else is not started: the
run ends ``CRASHED`` with the reason (an :class:`~cyxwiz.errors.AuthorizationError`) and the refusal is
audited. What starts is fixed here, not read back from the API: ``python -m prefect.engine`` in the project
directory with ``PREFECT__FLOW_ENTRYPOINT`` naming the local entrypoint, so the child loads the flow from
this checkout and never runs a deployment's pull steps; a deployment changed after the check runs nothing
new (no check-then-use window). Its environment is the worker's own plus the allowed job variables.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from cyxwiz.errors import AuthorizationError, ConfigError

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.flows import Flow

    from cyxwiz.audit import AuditSink

PROJECT = Path(__file__).resolve().parents[1]
_SET_WORKDIR = "prefect.deployments.steps.set_working_directory"
_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
#: The only environment a run may ask for (prefect.yaml's job-lifecycle sets both): log levels, no code.
ALLOWED_ENV: Mapping[str, frozenset[str]] = {
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": _LEVELS,
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": _LEVELS,
}


@dataclass(frozen=True, kw_only=True)
class ControlPolicy:
    """What the control worker may start: deployment name → entrypoint, from the project's prefect.yaml."""

    project: Path
    pool: str
    entrypoints: Mapping[str, str]
    pull_steps: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_project(cls, project: Path = PROJECT, *, pool: str = "control") -> ControlPolicy:
        """The deployments of ``project/prefect.yaml`` on ``pool`` (read once, at the worker's start)."""
        import yaml

        path = project / "prefect.yaml"
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the project's deployments: {exc}", path=str(path)) from exc
        entrypoints = {
            str(d["name"]): str(d["entrypoint"])
            for d in doc.get("deployments") or ()
            if (d.get("work_pool") or {}).get("name") == pool
        }
        if not entrypoints:
            raise ConfigError(f"no deployment on work pool {pool!r}", path=str(path), field="deployments")
        return cls(
            project=project.resolve(),
            pool=pool,
            entrypoints=entrypoints,
            pull_steps=tuple(doc.get("pull") or ()),
        )

    def local_entrypoint(self, entrypoint: str) -> str:
        """``flows/x.py:f`` as an absolute path inside the project (what the child imports)."""
        file, _, func = entrypoint.rpartition(":")
        return f"{self.project / file}:{func}"

    def check(
        self,
        *,
        deployment: DeploymentResponse | None,
        command_configured: bool,
        env: Mapping[str, str | None],
        working_dir: Path | None,
    ) -> str:
        """The local entrypoint to run, or AuthorizationError naming the field and the rule broken."""
        if deployment is None:
            raise AuthorizationError(
                "a run without a deployment is not run here", field="deployment", rule="C3"
            )
        name = deployment.name
        expected = self.entrypoints.get(name)
        if expected is None:
            known = ", ".join(sorted(self.entrypoints))
            raise AuthorizationError(
                f"deployment {name!r} is not one of the project's {self.pool!r} deployments ({known})",
                field="deployment.name", rule="C3",
            )  # fmt: skip
        if deployment.entrypoint != expected:
            raise AuthorizationError(
                f"deployment {name!r} names entrypoint {deployment.entrypoint!r}, the project {expected!r}",
                field="deployment.entrypoint", rule="C3",
            )  # fmt: skip
        self._check_pull_steps(deployment.pull_steps or [])
        if command_configured:
            raise AuthorizationError(
                "a run may not set its command", field="job_variables.command", rule="C3"
            )
        if working_dir is not None:
            raise AuthorizationError(
                "a run may not set its working directory", field="job_variables.working_dir", rule="C3"
            )
        for key, value in env.items():
            allowed = ALLOWED_ENV.get(key)
            if allowed is None:
                raise AuthorizationError(
                    f"a run may not set environment variable {key!r}", field="job_variables.env", rule="C3"
                )
            if value is not None and value not in allowed:
                raise AuthorizationError(
                    f"{key} must be one of {sorted(allowed)}", field="job_variables.env", rule="C3"
                )
        return self.local_entrypoint(expected)

    def _check_pull_steps(self, steps: Sequence[Mapping[str, Any]]) -> None:
        # The child never runs them (it loads the local entrypoint), but a deployment that asks for other
        # code is an attempt, not a configuration: refuse it so it is seen.
        for step in steps:
            if step in self.pull_steps or self._is_project_workdir(step):
                continue
            raise AuthorizationError(
                f"a pull step other than the project's own: {dict(step)!r}",
                field="deployment.pull_steps", rule="C3",
            )  # fmt: skip

    def _is_project_workdir(self, step: Mapping[str, Any]) -> bool:
        """``set_working_directory`` to this project (what ``infra.deploy.deploy_one`` writes)."""
        spec = step.get(_SET_WORKDIR)
        if len(step) != 1 or not isinstance(spec, Mapping) or set(spec) != {"directory"}:
            return False
        return Path(str(spec["directory"])).resolve() == self.project


class ControlJobConfiguration(ProcessJobConfiguration):
    """Keeps what the work pool, the deployment and the run asked for before Prefect merges it."""

    def prepare_for_flow_run(  # noqa: PLR0917 - Prefect's signature
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        self._requested_env = dict(self.env) if isinstance(self.env, dict) else {}
        self._deployment = deployment
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id)

    def requested(self) -> tuple[DeploymentResponse | None, dict[str, str | None]]:
        return getattr(self, "_deployment", None), getattr(self, "_requested_env", {})


class ControlWorker(ProcessWorker):
    """The ``control`` pool's worker (type ``process``): runs the project's own deployments only."""

    job_configuration = ControlJobConfiguration

    @classmethod
    def __dispatch_key__(cls) -> str:
        # Same pool type as Prefect's process worker, its own registry slot (never shadows ProcessWorker).
        return "cyxwiz-control"

    def __init__(
        self, *args: Any, policy: ControlPolicy, audit: AuditSink | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy
        #: Where refusals are recorded; None: the control plane's audit log (opened on the first refusal).
        self.audit = audit

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        deployment, env = (
            configuration.requested() if isinstance(configuration, ControlJobConfiguration) else (None, {})
        )
        try:
            entrypoint = self.policy.check(
                deployment=deployment,
                command_configured=configuration._command_configured,
                env=env,
                working_dir=configuration.working_dir,
            )
        except AuthorizationError as exc:
            await anyio.to_thread.run_sync(functools.partial(self._audit_refusal, flow_run, deployment, exc))
            # Raised before the run started: Prefect marks it CRASHED with this message.
            raise
        return await self._launch(flow_run, entrypoint, env, configuration.stream_output, task_status)

    async def _launch(
        self,
        flow_run: FlowRun,
        entrypoint: str,
        env: Mapping[str, str | None],
        stream_output: bool,
        task_status: anyio.abc.TaskStatus[int] | None,
    ) -> ProcessWorkerResult:
        # Prefect's ProcessWorker.run with the command, directory and flow fixed here (prefect 3.8.8).
        from prefect.flows import load_flow_from_entrypoint
        from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
        from prefect.runner._process_manager import ProcessHandle
        from prefect.runner._starter_engine import EngineCommandStarter

        status = task_status if task_status is not None else anyio.TASK_STATUS_IGNORED

        async def local_flow(_run: FlowRun) -> Flow[..., Any]:
            # For on_crashed / on_cancellation hooks: the same local code, never the deployment's.
            return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)

        execution: FlowRunExecutionResult | None = None
        async with FlowRunExecutorContext() as ctx:
            starter = EngineCommandStarter(
                entrypoint=entrypoint,  # PREFECT__FLOW_ENTRYPOINT: the child loads this, no pull steps
                command=None,  # python -m prefect.engine
                cwd=self.policy.project,
                env={k: v for k, v in env.items() if v is not None},
                stream_output=stream_output,
                control_channel=ctx.control_channel,
            )
            executor = ctx.create_executor(
                flow_run, starter, resolve_flow=local_flow, propose_submitting=False
            )

            async def execute(
                *, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            async with anyio.create_task_group() as group:
                handle = await group.start(execute)
                if handle.pid is None:
                    raise RuntimeError("Flow run process has no PID")
                status.started(handle.pid)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(status_code=execution.status_code, identifier=str(execution.handle.pid))

    def _audit_refusal(
        self, flow_run: FlowRun, deployment: DeploymentResponse | None, exc: AuthorizationError
    ) -> None:
        from cyxwiz.audit import events as ev
        from tasks import services

        details = {
            "flow_run_id": str(flow_run.id),
            "deployment": deployment.name if deployment is not None else None,
            "deployment_id": str(deployment.id) if deployment is not None else None,
            "field": exc.field,
            "reason": exc.message,
        }
        try:
            (self.audit or services.audit()).record(
                ev.make_event(
                    event_type=ev.EventType.AUTHORIZATION, actor_id=self.name,
                    actor_type=ev.ActorType.SERVICE, resource=f"flow-run:{flow_run.id}",
                    action="control.run.refused", outcome=ev.Outcome.DENIED, details=details,
                )
            )  # fmt: skip
        except Exception as audit_exc:  # the refusal stands even when the audit log cannot be opened
            self._logger.error(
                "control worker: refusal not audited: %s: %s", type(audit_exc).__name__, audit_exc
            )
