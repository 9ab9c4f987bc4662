"""States a node proposes for its own flow run (issue 18; SPEC C3, threat I).

A node run started by the lifecycle's task has that task run as its parent, and Prefect's server writes
the parent's id into every state of the run. The worker that cancels a run proposes a copy of its current
state as Cancelled, so that id rides along: it is the run's own and passes (without it a cancelled run
stayed Cancelling:
``tests/e2e/lifecycle/test_lifecycle.py::test_cancelled_node_run_is_stopped_and_refunded``).
Any other task run, a task run on a run without a parent, another flow run or a child run stays refused.
"""

from __future__ import annotations

import uuid

from cyxwiz.gateway.run_changes import state_refusal as _state_refusal

RUN = str(uuid.uuid4())
PARENT = str(uuid.uuid4())


def cancelled(**details: str) -> dict[str, object]:
    return {
        "state": {"type": "CANCELLED", "name": "Cancelled", "state_details": {"flow_run_id": RUN, **details}}
    }


def test_the_workers_cancelled_copy_naming_the_runs_own_parent_passes() -> None:
    assert _state_refusal(cancelled(task_run_id=PARENT), RUN, parent=PARENT) is None
    assert _state_refusal(cancelled(task_run_id=PARENT.upper()), RUN, parent=PARENT) is None
    assert _state_refusal(cancelled(), RUN, parent=None) is None  # positive control: no task run named


def test_another_task_run_or_run_is_still_refused() -> None:
    other = str(uuid.uuid4())
    assert _state_refusal(cancelled(task_run_id=other), RUN, parent=PARENT) == "state names task_run_id"
    assert _state_refusal(cancelled(task_run_id=PARENT), RUN, parent=None) == "state names task_run_id"
    both = cancelled(task_run_id=PARENT, child_flow_run_id=other)
    assert _state_refusal(both, RUN, parent=PARENT) == "state names child_flow_run_id"
    elsewhere = {
        "state": {"type": "CANCELLED", "state_details": {"flow_run_id": other, "task_run_id": PARENT}}
    }
    assert _state_refusal(elsewhere, RUN, parent=PARENT) == "state names another flow run"
