"""Dispatch is one atomic claim, also across processes (issue 21; SPEC C3, F2).

Several real processes (two control workers are two processes) open their own scheduler channel on the
same coordinator store, wait at one barrier, then all try to dispatch every job. Whatever the interleaving:
each job ends on exactly one node (its one winner; every other process got a :class:`ConflictError`),
no node holds more than the spreading rule gives it (one each while there are free nodes) or more than the
``max_jobs`` it declared, and a job no node can take is refused by every process and left untouched.
Both the embedded store (SQLite) and the production one (PostgreSQL).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import ConflictError
from tasks.coordinator_channel import SchedulerChannel
from tests.coordinator.conftest import Env

PROCESSES = 4
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coordinator.db'}"
    import uuid

    import sqlalchemy as sa

    server = str(request.getfixturevalue("postgres_url"))  # one server per session: a database per test
    name = f"race_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server.rsplit("/", 1)[0] + "/" + name


def _world(url: str, *, nodes: int, jobs: int, max_jobs: int | None = None) -> tuple[list[str], list[str]]:
    store = CoordinatorStore.from_url(url)
    node_ids = []
    for i in range(nodes):
        hardware: dict[str, Any] = {"max_jobs": max_jobs} if max_jobs else {}
        record = store.register_node(
            peer_id=f"12D3KooWrace{i:04d}", subject=f"CN=race-{i}", cert_serial=f"{i + 1:x}",
            hardware=hardware, wallet=f"W{i}",
        )  # fmt: skip
        store.heartbeat(record.node_id)
        node_ids.append(record.node_id)
    job_ids = [
        store.create_job(user_id="alice", spec={"job_type": "model"}, duration_s=60).job_id
        for _ in range(jobs)
    ]
    store.engine.dispose()
    return node_ids, job_ids


def _race(url: str, job_ids: list[str]) -> list[tuple[str, str, str]]:
    """PROCESSES workers (tests/coordinator/_race_worker.py), all released at once by one file."""
    with tempfile.TemporaryDirectory(prefix="race-") as tmp:
        go = Path(tmp) / "go"
        argv = [sys.executable, "-m", "tests.coordinator._race_worker", url]
        out = subprocess.PIPE
        procs = [
            subprocess.Popen([*argv, str(n), str(go), *job_ids], cwd=PROJECT, stdout=out, text=True)
            for n in range(PROCESSES)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            go.touch()
            outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs), [proc.returncode for proc in procs]
    return [tuple(row) for out in outputs for row in json.loads(out)]  # type: ignore[misc]


def _check_one_winner(results: list[tuple[str, str, str]], job_ids: list[str]) -> dict[str, str]:
    won = {job: node for job, outcome, node in results if outcome == "ok"}
    wins = Counter(job for job, outcome, _ in results if outcome == "ok")
    assert all(count == 1 for count in wins.values()), f"a job was dispatched twice: {wins}"
    for _job, outcome, message in results:
        assert outcome == "ok" or "already assigned" in message or "holds as many" in message, message
    assert len(results) == PROCESSES * len(job_ids)
    return won


def test_racing_dispatchers_never_put_two_jobs_on_one_free_node(db_url: str) -> None:
    node_ids, job_ids = _world(db_url, nodes=6, jobs=6)
    won = _check_one_winner(_race(db_url, job_ids), job_ids)
    assert set(won) == set(job_ids), "every job got a node"
    store = CoordinatorStore.from_url(db_url)
    placed = {job: store.job(job).node_id for job in job_ids}
    assert placed == won  # the store says what the winners were told
    assert sorted(placed.values()) == sorted(node_ids), (
        f"a node was given two jobs: {Counter(placed.values())}"
    )
    assert len({store.job(job).assignment for job in job_ids}) == len(job_ids)


def test_racing_dispatchers_respect_what_each_node_declared_it_runs(db_url: str) -> None:
    node_ids, job_ids = _world(db_url, nodes=3, jobs=8, max_jobs=2)
    won = _check_one_winner(_race(db_url, job_ids), job_ids)
    store = CoordinatorStore.from_url(db_url)
    loads = Counter(store.job(job).node_id for job in job_ids if store.job(job).node_id)
    assert loads == dict.fromkeys(node_ids, 2), loads  # never over-assigned, every slot used
    left = [job for job in job_ids if job not in won]
    assert len(left) == 2
    for job in left:  # refused by every process, and nothing half-assigned
        assert store.job(job).status == "submitted" and store.job(job).node_id is None


def test_one_dispatcher_alone_spreads_and_a_reassignment_names_the_lost_node(tmp_path: Path) -> None:
    """Positive control: the same claim from one process spreads jobs one per node; a job held by a node
    moves only when the caller names that node as lost."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    node_ids, job_ids = _world(url, nodes=3, jobs=3)
    channel = SchedulerChannel(store=CoordinatorStore.from_url(url))
    first = [channel.assign(job)["node_id"] for job in job_ids]
    assert sorted(first) == sorted(node_ids)
    with pytest.raises(ConflictError, match="already assigned"):
        channel.assign(job_ids[0])
    before = channel.store.job(job_ids[0])
    moved = channel.assign(job_ids[0], exclude=[first[0]])
    assert moved["node_id"] != first[0] and moved["assignment"] != before.assignment


def test_a_node_without_the_minimum_stake_is_skipped_not_half_assigned(tmp_path: Path) -> None:
    """F1: dispatch chooses among staked nodes only, before the claim; none staked is a clean refusal."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    node_ids, job_ids = _world(url, nodes=2, jobs=2)
    store = CoordinatorStore.from_url(url)
    staked_peer = store.node(node_ids[1]).peer_id
    channel = SchedulerChannel(store=store, staked=lambda peers: {p for p in peers if p == staked_peer})
    assert channel.assign(job_ids[0])["node_id"] == node_ids[1]  # the idle unstaked node is passed over
    broke = SchedulerChannel(store=store, staked=lambda peers: set())
    with pytest.raises(ConflictError, match="no healthy"):
        broke.assign(job_ids[1])
    assert store.job(job_ids[1]).status == "submitted" and store.job(job_ids[1]).node_id is None


def test_a_node_declares_its_cap_at_registration(env: Env) -> None:
    """``python -m agents --max-jobs 1`` registers hardware.max_jobs over mTLS; dispatch keeps to it."""
    with env.client("node-a") as c:
        bad = c.post("/v1/nodes/register", json={"hardware": {"max_jobs": 0}})
        assert bad.status_code == 422  # refused input, nothing registered
        assert env.coord.store.list_nodes() == []
        r = c.post("/v1/nodes/register", json={"hardware": {"gpus": 1, "max_jobs": 1}})
        assert r.status_code == 200, r.text
    node_id = r.json()["node_id"]
    assert env.coord.store.node(node_id).hardware["max_jobs"] == 1
    store = env.coord.store
    first, second = (store.create_job(user_id="u", spec={}, duration_s=60).job_id for _ in range(2))
    assert store.claim_job(first, candidates=[node_id]).node_id == node_id
    with pytest.raises(ConflictError, match="holds as many open jobs"):
        store.claim_job(second, candidates=[node_id])
    store.update_job(first, status="released")  # its one job settled: the slot is free again
    assert store.claim_job(second, candidates=[node_id]).node_id == node_id


def test_grants_die_with_the_assignment_and_the_job(db_url: str) -> None:
    """C3 on both stores: what the node was given under one assignment is refused after a re-dispatch
    (and what the new node is given is live), everything after the job settled; a job already past its
    proof or settled is never claimed again."""
    node_ids, job_ids = _world(db_url, nodes=2, jobs=1)
    store = CoordinatorStore.from_url(db_url)
    job_id = job_ids[0]
    first = store.claim_job(job_id, candidates=[node_ids[0]])
    store.record_grant("jti-a", job=first.job, kind="job-token")
    assert store.grant_refusal("jti-a", job=store.job(job_id)) is None  # control: live while it holds it
    second = store.claim_job(job_id, candidates=node_ids, exclude=[node_ids[0]])
    assert second.node_id == node_ids[1]
    assert "re-assigned to another node" in (store.grant_refusal("jti-a", job=store.job(job_id)) or "")
    store.record_grant("jti-b", job=second.job, kind="job-token")
    assert store.grant_refusal("jti-b", job=store.job(job_id)) is None
    assert store.grant_refusal("never-recorded", job=store.job(job_id)) is None  # left to the other rules
    store.update_job(job_id, status="verifying")
    with pytest.raises(ConflictError, match="cannot be dispatched"):
        store.claim_job(job_id, candidates=node_ids, exclude=[node_ids[1]])
    store.update_job(job_id, status="refunded")
    assert store.grant_refusal("jti-b", job=store.job(job_id)) == "job token is dead: job is refunded"
    assert store.job(job_id).node_id == node_ids[1]  # nothing moved by the refused claim
