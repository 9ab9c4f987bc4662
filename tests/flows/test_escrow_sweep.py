"""The escrow sweep's view of lifecycle runs, against a real Prefect server (F2): only a run that is over
(or unknown to Prefect) lets the sweep refund an expired escrow."""

from __future__ import annotations

import uuid

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
