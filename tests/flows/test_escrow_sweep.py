"""The escrow sweep's view of lifecycle runs, against a real Prefect server (F2): only a run that is over
(or unknown to Prefect) lets the sweep refund an expired escrow."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow

from tasks.sweep import lifecycle_run_state

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


@flow(name="sweep-probe")
def _probe() -> int:
    return 1


def test_run_states_as_the_sweep_sees_them(prefect_server: object) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    state = _probe(return_state=True)
    finished = str(state.state_details.flow_run_id)
    with get_client(sync_client=True) as client:
        running = client.create_flow_run(_probe, state=Running())
    assert lifecycle_run_state(finished) == "terminal"
    assert lifecycle_run_state(str(running.id)) == "running"
    assert lifecycle_run_state(str(uuid.uuid4())) == "gone"
    assert lifecycle_run_state("not-a-run-id") == "gone"
    assert lifecycle_run_state(None) == "gone"


def test_a_running_run_without_heartbeats_is_dead_and_marked_crashed(prefect_server: object) -> None:
    """A run killed with its process stays RUNNING in Prefect: once it sent no flow-run event for
    ``silent_after_s`` the sweep takes it for dead (issue 21 chaos) and says so in Prefect (CRASHED)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        orphan = client.create_flow_run(_probe, state=Running())
    assert lifecycle_run_state(str(orphan.id), silent_after_s=600) == "running"  # just started: alive
    time.sleep(2.5)
    assert lifecycle_run_state(str(orphan.id), silent_after_s=2) == "terminal"
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(orphan.id).state
    assert state is not None and state.type.value == "CRASHED" and "no heartbeat" in (state.message or "")


def test_silent_runs_of_a_flow_are_reaped_a_live_or_kept_or_other_one_is_not(prefect_server: object) -> None:
    """A lifecycle killed after it closed its job is asked about by no escrow rule: the reaper finds every
    silent RUNNING run of the flow and marks it CRASHED (issue 21: control worker killed at archive); a
    run that still beats, a run held for its dispute window (``keep``) and another flow's run stay."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from tasks.sweep import reap_silent_runs

    @flow(name="sweep-probe-other")
    def _other() -> int:
        return 2

    with get_client(sync_client=True) as client:
        dead = client.create_flow_run(_probe, state=Running())
        held = client.create_flow_run(_probe, state=Running())
        other = client.create_flow_run(_other, state=Running())
    assert reap_silent_runs("sweep-probe", silent_after_s=600) == []  # positive control: just started
    time.sleep(2.5)
    with get_client(sync_client=True) as client:
        alive = client.create_flow_run(_probe, state=Running())  # started now: not silent yet
    reaped = reap_silent_runs("sweep-probe", silent_after_s=2, keep={str(held.id)})
    assert str(dead.id) in reaped
    assert not {str(held.id), str(alive.id), str(other.id)} & set(reaped)
    with get_client(sync_client=True) as client:
        states = {str(r.id): client.read_flow_run(r.id).state for r in (dead, held, other, alive)}
    kinds = {run_id: state.type.value if state else None for run_id, state in states.items()}
    assert kinds.pop(str(dead.id)) == "CRASHED"
    assert set(kinds.values()) == {"RUNNING"}, kinds


def test_the_reaper_names_the_lifecycle_flow() -> None:
    from flows.job_lifecycle import job_lifecycle
    from tasks.sweep import LIFECYCLE_FLOW

    assert job_lifecycle.name == LIFECYCLE_FLOW


def test_a_restarted_worker_crashes_only_its_own_runs_whose_process_is_gone(prefect_server: object) -> None:
    """A control worker killed -9 takes its lifecycle runs with it; restarted under the same name it marks
    them CRASHED at once (issue 21: one sweep after the restart, not after ``run_silent_s``). Left alone:
    a run whose process still lives, another worker's run, a run with no recorded process, a finished run."""
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    from tasks.sweep import WORKER_LABEL, crash_orphans_of

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists (reused within this test: vanishingly unlikely)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with get_client(sync_client=True) as client:

            def run(worker: str, pid: int | None, state: Any = None) -> str:
                made = client.create_flow_run(_probe, state=state or Running())
                client.update_flow_run_labels(made.id, {WORKER_LABEL: worker})
                if pid is not None:
                    client.update_flow_run(made.id, infrastructure_pid=str(pid))
                return str(made.id)

            orphan = run("w-restarted", gone.pid)
            pending_orphan = run("w-restarted", gone.pid, Pending())
            still_running = run("w-restarted", live.pid)
            foreign = run("w-other", gone.pid)
            unstarted = run("w-restarted", None)
        crashed = crash_orphans_of("w-restarted")
        assert set(crashed) == {orphan, pending_orphan}
        assert crash_orphans_of("w-restarted") == []  # idempotent: a second start finds nothing more
        with get_client(sync_client=True) as client:
            kinds = {
                r: (client.read_flow_run(uuid.UUID(r)).state or Running()).type.value
                for r in (orphan, pending_orphan, still_running, foreign, unstarted)
            }
            message = (client.read_flow_run(uuid.UUID(orphan)).state or Running()).message or ""
        assert kinds == {
            orphan: "CRASHED",
            pending_orphan: "CRASHED",
            still_running: "RUNNING",
            foreign: "RUNNING",
            unstarted: "RUNNING",
        }
        assert "w-restarted" in message and "restarted" in message
        assert lifecycle_run_state(orphan) == "terminal"  # what lets the next sweep settle its escrow
    finally:
        live.kill()
        live.wait()


def test_the_control_worker_launcher_teaches_its_options() -> None:
    import subprocess
    import sys

    from infra.stack import PROJECT

    proc = subprocess.run(
        [sys.executable, "-m", "infra.control_worker", "--help"],
        capture_output=True, text=True, check=False, cwd=PROJECT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "--name" in proc.stdout and "CRASHED" in proc.stdout
