"""A node lost mid-job (issue 21 chaos; F1, F2, C3): when it counts as lost, and that re-dispatch never
picks a lost node again. The whole path runs in tests/e2e/test_chaos.py (kill -9) and
tests/e2e/test_multihost.py (a partition)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import ConflictError
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from tasks.coordinator_channel import SchedulerChannel
from tasks.redispatch import lost_reason
from tests.flows.test_coordinator_channel import WALLETS, _register

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def _lost(
    state: str, *, final: bool = False, beat_age: float | None = 1.0, quiet: float | None = None
) -> str | None:
    beat = None if beat_age is None else NOW - dt.timedelta(seconds=beat_age)
    return lost_reason(
        state=state, final=final, last_heartbeat=beat, run_quiet_for=quiet, now=NOW,
        node_lost_s=10, run_silent_s=60,
    )  # fmt: skip


def test_a_node_that_heartbeats_and_whose_run_lives_is_not_lost() -> None:
    assert _lost("SCHEDULED") is None
    assert _lost("RUNNING", quiet=5) is None
    assert _lost("COMPLETED", final=True, beat_age=500) is None  # over: its result stands
    assert _lost("FAILED", final=True) is None  # the user's code failed: verification refunds, no retry


def test_a_silent_node_a_crashed_run_or_an_orphaned_run_is_lost() -> None:
    assert "no heartbeat" in (_lost("RUNNING", beat_age=11) or "")
    assert "no heartbeat" in (_lost("PENDING", beat_age=None) or "")
    assert "crashed" in (_lost("CRASHED", final=True) or "")
    # The agent came back (fresh heartbeat) but the run it held sends nothing: nobody will finish it.
    assert "flow run sent no heartbeat" in (_lost("RUNNING", quiet=61) or "")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SchedulerChannel, DevPKI, CoordinatorStore]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1", "node-2", "node-3"))
    store = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'c.db'}")
    return SchedulerChannel(store=store, node_wallets=dict(WALLETS), crl=pki.crl), pki, store


def test_redispatch_moves_the_job_row_to_another_node_and_never_back(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    channel, pki, store = setup
    first = _register(store, pki, "node-1")
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    assert channel.assign(job_id)["node_id"] == first
    with pytest.raises(ConflictError):  # only the lost node is healthy: nothing to move to
        channel.assign(job_id, exclude=[first])
    assert channel.job(job_id)["node_id"] == first  # nothing half-moved
    second = _register(store, pki, "node-2")
    store.heartbeat(first)  # the lost node is back and fresher: it is still not picked for this job
    moved = channel.assign(job_id, exclude=[first])
    assert moved["node_id"] == second and moved["wallet"] == "W2"
    # The job row names the new node: the lost node's job token is refused from here on (C3).
    assert channel.job(job_id)["node_id"] == second
