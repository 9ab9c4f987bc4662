"""Red team: the Prefect API credential alone cannot make the control worker run code (issue 17; F1, C3, I).

The coordinator and the gateway hold the API credential; the control worker holds the ledger passphrase
and the escrow keys. Each attack below uses only the API: a flow run whose job variables set the command,
the environment (``PYTHONPATH`` to a ``sitecustomize``, ``PREFECT__FLOW_ENTRYPOINT``) or the working
directory; a deployment of a known name with another entrypoint or another pull step; a deployment the
project never declared. Each would create a marker file if anything it names ran. The guarded worker
(:class:`agents.control_worker.ControlWorker`, the one ``python -m infra.control_worker`` runs) polls once
on a real Prefect server: every attack ends CRASHED with the refusal, its marker absent, one audit event
each; the honest run beside them (the project's deployment, an allowed log-level variable) completes.
Against Prefect's plain ``ProcessWorker`` on the same server every one of these runs creates its marker
(checked when the test was written), so each is a working attack, not a malformed request.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # the module's Prefect server and one worker pass: ~60 s under load

POOL = "control-redteam"
WORKER = "cyxwiz-control@redteam"

HONEST = """
from pathlib import Path
from prefect import flow

@flow(name="honest")
def honest(marker: str) -> str:
    Path(marker).write_text("honest ran")
    return "ok"
"""
EVIL = """
from pathlib import Path
from prefect import flow

@flow(name="evil")
def evil(marker: str) -> None:
    Path(marker).write_text("evil ran")
"""


def _project(root: Path) -> Path:
    """A project of one honest flow on the pool, as the worker's own prefect.yaml declares it."""
    project = root / "project"
    project.mkdir()
    (project / "honest.py").write_text(HONEST)
    (project / "evil.py").write_text(EVIL)
    (project / "prefect.yaml").write_text(
        "name: redteam\n"
        "pull:\n"
        "  - prefect.deployments.steps.set_working_directory:\n"
        '      directory: "{{ $CYXWIZ_PROJECT_DIR }}"\n'
        "deployments:\n"
        "  - name: honest\n"
        "    entrypoint: honest.py:honest\n"
        f"    work_pool: {{name: {POOL}, work_queue_name: default}}\n"
        "  - name: elsewhere\n"
        "    entrypoint: evil.py:evil\n"
        "    work_pool: {name: gpu, work_queue_name: default}\n"
    )
    return project


def _attacks(client: Any, project: Path, marks: Path) -> dict[str, tuple[Any, Path]]:
    """Every run the attacker creates (name → (flow run id, the marker its code would create))."""
    evil_dir = marks / "pythonpath"
    evil_dir.mkdir()
    own_pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
    honest_flow = client.create_flow_from_name("honest")
    evil_flow = client.create_flow_from_name("evil")
    # A deployment's name is unique per flow: the attacker's "honest" deployments hang off other flows.
    third_flow, fourth_flow = client.create_flow_from_name("third"), client.create_flow_from_name("fourth")
    (evil_dir / "sitecustomize.py").write_text(
        f"open({str(marks / 'pythonpath.marker')!r}, 'w').write('x')\n"
    )
    honest = client.create_deployment(
        flow_id=honest_flow, name="honest", entrypoint="honest.py:honest", work_pool_name=POOL,
        work_queue_name="default", pull_steps=own_pull,
    )  # fmt: skip

    def deployment(flow_id: Any, name: str, entrypoint: str, pull: list[dict[str, Any]]) -> Any:
        return client.create_deployment(
            flow_id=flow_id, name=name, entrypoint=entrypoint, work_pool_name=POOL, work_queue_name="default",
            pull_steps=pull,
        )  # fmt: skip

    def run(name: str, deployment_id: Any, **job_variables: Any) -> None:
        marker = marks / f"{name}.marker"
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"marker": str(marker)}, job_variables=job_variables or None
        )
        runs[name] = (flow_run.id, marker)

    runs: dict[str, tuple[Any, Path]] = {}
    touch = f"/bin/sh -c 'touch {marks / 'command.marker'}'"
    run("command", honest, command=touch)
    run("pythonpath", honest, env={"PYTHONPATH": str(evil_dir)})
    run("entrypoint-env", honest, env={"PREFECT__FLOW_ENTRYPOINT": f"{project / 'evil.py'}:evil"})
    run("working-dir", honest, working_dir=str(evil_dir))
    # (b) a deployment of the project's name whose entrypoint or pull steps are someone else's
    other_entry = deployment(evil_flow, "honest", "evil.py:evil", own_pull)
    run("other-entrypoint", other_entry)
    clone = [{"prefect.deployments.steps.run_shell_script": {"script": f"touch {marks / 'pull.marker'}"}}]
    run("pull", deployment(third_flow, "honest", "honest.py:honest", clone))
    pulled = deployment(fourth_flow, "honest", "honest.py:honest", [*own_pull, *clone])
    run("extra-pull", pulled)
    # (c) deployments the project never put on this pool
    run("unknown", deployment(evil_flow, "sweep-helper", "evil.py:evil", own_pull))
    run("other-pool", deployment(evil_flow, "elsewhere", "evil.py:evil", own_pull))
    # the positive control: the project's own deployment with the one kind of variable it may set
    run("honest", honest, env={"PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO"})
    return runs


@pytest.fixture(scope="module")
def outcome(prefect_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from agents.control_worker import ControlPolicy, ControlWorker
    from cyxwiz.audit import MemorySink

    root = tmp_path_factory.mktemp("control-redteam")
    project = _project(root)
    marks = root / "marks"
    marks.mkdir()
    policy = ControlPolicy.from_project(project, pool=POOL)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
        runs = _attacks(client, project, marks)
        audit = MemorySink()
        worker = ControlWorker(work_pool_name=POOL, name=WORKER, policy=policy, audit=audit)
        anyio.run(lambda: worker.start(run_once=True))
        states = {name: client.read_flow_run(run_id).state for name, (run_id, _) in runs.items()}
    yield {"runs": runs, "states": states, "audit": audit.events, "marks": marks, "project": project}


ATTACKS = (
    "command", "pythonpath", "entrypoint-env", "working-dir", "other-entrypoint", "pull", "extra-pull",
    "unknown", "other-pool",
)  # fmt: skip
REASONS = {
    "command": "job_variables.command",
    "pythonpath": "'PYTHONPATH'",
    "entrypoint-env": "'PREFECT__FLOW_ENTRYPOINT'",
    "working-dir": "job_variables.working_dir",
    "other-entrypoint": "deployment.entrypoint",
    "pull": "deployment.pull_steps",
    "extra-pull": "deployment.pull_steps",
    "unknown": "'sweep-helper' is not one of the project's",
    "other-pool": "'elsewhere' is not one of the project's",
}


def test_the_honest_run_of_the_projects_own_deployment_runs(outcome: dict[str, Any]) -> None:
    """Positive control: the allow-listed deployment with an allowed log-level variable completes."""
    state = outcome["states"]["honest"]
    assert state.is_completed(), state
    assert outcome["runs"]["honest"][1].read_text() == "honest ran"


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_run_the_api_shaped_is_refused_not_run_and_audited(outcome: dict[str, Any], attack: str) -> None:
    """C3/F1: CRASHED with the rule it broke, none of its code ran, one DENIED audit event names it."""
    run_id, marker = outcome["runs"][attack]
    state = outcome["states"][attack]
    assert state.is_crashed(), (attack, state)
    assert "AuthorizationError" in (state.message or "") and REASONS[attack] in (state.message or ""), state
    assert not marker.exists()
    ran = sorted(m.name for m in outcome["marks"].glob("*.marker"))
    assert ran == ["honest.marker"], ran
    events = [e for e in outcome["audit"] if e.resource == f"flow-run:{run_id}"]
    assert len(events) == 1, events
    assert events[0].action == "control.run.refused" and events[0].outcome.value == "denied"
    assert events[0].actor_id == WORKER


def test_the_policy_is_the_repositorys_own_prefect_yaml() -> None:
    """The real worker's allow-list: every control-pool deployment of prefect.yaml, no gpu one, and the
    job variables prefect.yaml itself sets pass the check."""
    import yaml

    from agents.control_worker import PROJECT, ControlPolicy

    policy = ControlPolicy.from_project()
    doc = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    control = {d["name"]: d for d in doc["deployments"] if d["work_pool"]["name"] == "control"}
    assert dict(policy.entrypoints) == {n: d["entrypoint"] for n, d in control.items()}
    assert "sandboxed-train" not in policy.entrypoints
    lifecycle = control["job-lifecycle"]
    stored = _Deployment(name="job-lifecycle", entrypoint=lifecycle["entrypoint"], pull_steps=doc["pull"])
    env = lifecycle["work_pool"]["job_variables"]["env"]
    entry = policy.check(deployment=stored, command_configured=False, env=env, working_dir=None)  # type: ignore[arg-type]
    assert entry == f"{PROJECT}/flows/job_lifecycle.py:job_lifecycle"


class _Deployment:
    """The three fields of a DeploymentResponse the policy reads."""

    def __init__(self, *, name: str, entrypoint: str, pull_steps: list[dict[str, Any]]) -> None:
        self.name, self.entrypoint, self.pull_steps, self.id = name, entrypoint, pull_steps, uuid.uuid4()


def _rewritten(template: dict[str, Any], how: str, evil_dir: Path, marker: Path) -> dict[str, Any]:
    """The pool's base job template as the attacker rewrites it (``PATCH /work_pools``): a default
    command, or an environment baked into the job configuration."""
    import copy

    template = copy.deepcopy(template)
    if how == "default-command":
        template["variables"]["properties"]["command"]["default"] = f"/bin/sh -c 'touch {marker}'"
    else:
        template["job_configuration"]["env"] = {"PYTHONPATH": str(evil_dir)}
    return template


@pytest.mark.parametrize("how", ["default-command", "baked-env"])
def test_a_work_pool_template_rewritten_through_the_api_runs_nothing(
    prefect_server: Any, tmp_path: Path, how: str
) -> None:
    """C3: the pool itself is API state. A rewritten base job template is refused like a run's variables."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from agents.control_worker import ControlPolicy, ControlWorker
    from cyxwiz.audit import MemorySink

    project, pool = _project(tmp_path), f"{POOL}-{how}"
    evil_dir, marker = tmp_path / "pythonpath", tmp_path / "template.marker"
    evil_dir.mkdir()
    (evil_dir / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    template = _rewritten(ProcessWorker.get_default_base_job_template(), how, evil_dir, marker)
    policy = ControlPolicy(
        project=project, pool=pool, entrypoints={"honest": "honest.py:honest"}, pull_steps=()
    )
    audit = MemorySink()
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name=pool, type="process", base_job_template=template), overwrite=True
        )
        flow_id = client.create_flow_from_name(f"honest-{how}")
        deployment = client.create_deployment(
            flow_id=flow_id, name="honest", entrypoint="honest.py:honest", work_pool_name=pool
        )
        flow_run = client.create_flow_run_from_deployment(
            deployment, parameters={"marker": str(tmp_path / "honest.marker")}
        )
        worker = ControlWorker(work_pool_name=pool, name=WORKER, policy=policy, audit=audit)
        anyio.run(lambda: worker.start(run_once=True))
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.is_crashed(), state
    assert "AuthorizationError" in (state.message or ""), state
    assert not marker.exists() and not (tmp_path / "honest.marker").exists()
    assert [e.action for e in audit.events] == ["control.run.refused"]
