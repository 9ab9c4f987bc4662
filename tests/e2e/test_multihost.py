"""Many hosts on one machine (issue 21; SPEC C3, D1, F1, F2, H1): the control plane, three node agents and two
users each on their own network namespace, Prefect on PostgreSQL.

The control plane (Prefect server on PostgreSQL, ledger service, coordinator, gateway, control worker) runs
in its namespace; each node agent in its own, with only its certificate and the coordinator and gateway
URLs; each user submits with ``cyxwiz job`` from theirs. A node reaches the coordinator and the gateway
and nothing else of the control plane. Jobs from both users run on all three nodes, end to end: released,
paid exactly once, the token supply conserved, the audit log intact.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.cluster import Cluster, port_of
from infra.netns import SERVICE_ADDRESS, can_build, list_namespaces
from tests.e2e.lifecycle_conftest import tiny_job, wait_until
from tests.infra.test_netns import PROBE

_WHY = can_build()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.prefect,
    pytest.mark.postgres,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(_WHY is not None, reason=_WHY or ""),
]

NODES = ("node-1", "node-2", "node-3")
AUDIT_VERIFY = (sys.executable, "-m", "cyxwiz.cli", "audit", "verify")
USERS = ("demo-user", "user-2")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # A short home: the node's sandbox bridge socket must stay under the AF_UNIX path limit.
    home = Path(tempfile.mkdtemp(prefix="cyxmh-", dir="/tmp"))
    failed_before = request.session.testsfailed
    tag = None
    try:
        with Cluster.running(home, nodes=NODES, users=USERS) as built:
            tag = built.net.tag
            for name in NODES:
                built.start_agent(name)
            for name in NODES:
                _wait_for_node(built, name)
            yield built
    finally:
        # A failure keeps the home (the agents', control worker's and Prefect's logs, the audit log): a
        # lifecycle that went wrong is only explained there.
        if request.session.testsfailed == failed_before:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"\nmulti-host: a test failed, its cluster home is kept at {home}", file=sys.stderr)
    assert tag is None or not list_namespaces(tag), "the topology is gone"


def _store(cluster: Cluster) -> Any:
    from cyxwiz.coordinator.store import CoordinatorStore

    return CoordinatorStore.from_url(cluster.ready["coordinator_db"])


def _heartbeats(cluster: Cluster) -> dict[str, Any]:
    from tasks.coordinator_channel import node_name

    store = _store(cluster)
    try:
        return {node_name(r.subject): r.last_heartbeat for r in store.list_nodes() if r.last_heartbeat}
    finally:
        store.engine.dispose()


def _wait_for_node(cluster: Cluster, name: str) -> None:
    if wait_until(lambda: name in _heartbeats(cluster), timeout=180, interval=1.0):
        return
    log = (cluster.home / "agents" / name / "agent.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"{name} never registered from its namespace:\n{log}")


def _probe(cluster: Cluster, host: Any, ports: list[int]) -> dict[int, str]:
    proc = cluster.run(host, [sys.executable, "-c", PROBE, SERVICE_ADDRESS, *map(str, ports)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {int(k): v for k, v in json.loads(proc.stdout).items()}


def test_a_node_host_reaches_only_the_coordinator_and_the_gateway(cluster: Cluster) -> None:
    ready = cluster.ready
    public = {"coordinator": port_of(ready["coordinator_url"]), "gateway": port_of(ready["gateway_url"])}
    private = {
        "prefect-api": port_of(ready["prefect_api_url"]),
        "postgresql": int(ready["postgres_port"]),
        "ledger": port_of(ready["ledger_rpc_url"]),
    }
    ports = [*public.values(), *private.values()]
    # Positive control: Prefect and PostgreSQL listen on every address of the control plane (not only its
    # loopback), so what keeps a node out is the firewall.
    inside = _probe(cluster, cluster.net.control, ports)
    assert inside[private["prefect-api"]] == "open" and inside[private["postgresql"]] == "open", inside
    for name in NODES:
        seen = _probe(cluster, cluster.host(name), ports)
        assert {k: seen[p] for k, p in public.items()} == dict.fromkeys(public, "open"), (name, seen)
        assert {k: seen[p] for k, p in private.items()} == dict.fromkeys(private, "ConnectionRefusedError"), (
            name,
            seen,
        )


def _submit(cluster: Cluster, user: str, spec: dict[str, Any]) -> str:
    path = cluster.home / f"spec-{user}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    proc = cluster.job_cli(user, "submit", str(path), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"job-[0-9a-f]+", proc.stdout)
    assert found, proc.stdout
    return found.group(0)


def _job(cluster: Cluster, job_id: str) -> Any:
    store = _store(cluster)
    try:
        return store.job(job_id)
    finally:
        store.engine.dispose()


def _submit_assigned(cluster: Cluster, user: str, spec: dict[str, Any]) -> str:
    """Submit as ``user`` and wait until the job is dispatched: the next job then sees this node busy."""
    job_id = _submit(cluster, user, spec)
    assert wait_until(lambda: _job(cluster, job_id).node_id, timeout=300, interval=1.0), _explain(
        cluster, job_id
    )
    return job_id


def _postgres(cluster: Cluster, sql: str, *args: str) -> list[list[Any]]:
    """Rows of ``sql`` (``%s`` placeholders) on Prefect's PostgreSQL, asked from inside the control plane."""
    query = (
        "import json, sys, psycopg\n"
        "with psycopg.connect(sys.argv[1]) as c:\n"
        "    rows = c.execute(sys.argv[2], sys.argv[3:]).fetchall()\n"
        "print(json.dumps([list(r) for r in rows], default=str))\n"
    )
    url = cluster.ready["postgres_url"].replace("postgresql+psycopg://", "postgresql://")
    proc = cluster.run(cluster.net.control, [sys.executable, "-c", query, url, sql, *args], timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows: list[list[Any]] = json.loads(proc.stdout)
    return rows


def _explain(cluster: Cluster, job_id: str) -> str:
    """What happened to ``job_id``: its lifecycle's and node run's states and Prefect logs (PostgreSQL, gone
    with the cluster otherwise), its audit events and the agents' log tails; also written to the home."""
    record = _job(cluster, job_id)
    parts = [
        f"job {job_id}: {record.status} on {record.node_id} for {record.user_id}, progress {record.progress}"
    ]
    with contextlib.suppress(Exception):
        runs = _postgres(
            cluster,
            "select f.name, r.name, r.state_name, r.state_type, l.timestamp, l.level, l.message"
            " from flow_run r join flow f on f.id = r.flow_id left join log l on l.flow_run_id = r.id"
            " where r.parameters::text like %s order by l.timestamp",
            f"%{job_id}%",
        )
        parts += [" | ".join(str(c) for c in row) for row in runs]
    audit = cluster.home / "audit"
    for path in sorted(audit.glob("audit-*.jsonl")):
        lines = [line for line in path.read_text(errors="replace").splitlines() if job_id in line]
        # Decisions that went against the job and every money move first; the routine grants after.
        parts += [line for line in lines if '"success"' not in line or '"Payment"' in line]
        parts += [line for line in lines if '"success"' in line and '"Payment"' not in line]
    for name in NODES:
        log = cluster.home / "agents" / name / "agent.log"
        if log.exists():
            parts.append(f"--- {name} agent log (tail)\n{log.read_text(errors='replace')[-3000:]}")
    text = "\n".join(parts)
    path = cluster.home / f"explain-{job_id}.txt"
    path.write_text(text, encoding="utf-8")
    return f"{text[:12000]}\n... (all of it in {path})"


def _audit_verifies(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    """``cyxwiz audit verify`` with the pinned key. The control plane keeps writing while it runs (gateway
    and heartbeat decisions), so a read that races an append is retried: a broken log never verifies."""
    argv = [
        *AUDIT_VERIFY,
        str(cluster.home / "audit"),
        "--public-key",
        str(cluster.home / "audit-signing-key.pem"),
    ]
    for _ in range(5):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        if proc.returncode == 0:
            break
        time.sleep(1.0)
    return proc


def test_two_users_three_nodes_end_to_end(cluster: Cluster) -> None:
    """Three jobs of two users, one after the other: the scheduler gives each to an idle node (fewest open
    jobs, then least recently given one), so they run on the three node hosts at once. Nothing here pauses
    a node: its agent carries the node's tunnel to the gateway, and a paused agent stalls the node's runs."""
    from tasks.coordinator_channel import node_name

    # The wall time bounds the lifecycle's wait for the node run (wall + dispatch margin): generous, as the
    # three runs share the machine's cores with the control plane.
    spec = tiny_job(epochs=4, wall_seconds=600)
    before = cluster.balances()
    plan = ("demo-user", "user-2", "demo-user")
    jobs = {_submit_assigned(cluster, user, {**spec, "user": user}): user for user in plan}
    for job_id, user in jobs.items():
        waited = cluster.job_cli(user, "wait", job_id, "--timeout", "900", timeout=1000)
        assert waited.returncode == 0, f"{waited.stdout[-800:]}\n{_explain(cluster, job_id)}"
    store = _store(cluster)
    try:
        names = {n.node_id: node_name(n.subject) for n in store.list_nodes()}
        records = {job_id: store.job(job_id) for job_id in jobs}
    finally:
        store.engine.dispose()
    for job_id, record in records.items():
        assert record.status == "released", (job_id, record.status, _explain(cluster, job_id))
        assert record.user_id == jobs[job_id], (job_id, record)
    assert sorted(names[r.node_id] for r in records.values()) == sorted(NODES), records
    after = cluster.balances()
    # F1/F2: each job paid exactly once, from its user's wallet to its node's, and no token appeared or
    # vanished.
    for node in NODES:
        assert after[f"node:{node}"] - before[f"node:{node}"] == spec["payment"], (node, before, after)
    for user in USERS:
        spent = spec["payment"] * plan.count(user)
        assert before[f"user:{user}"] - after[f"user:{user}"] == spent, (user, before, after)
    assert sum(after.values()) == sum(before.values())
    verified = _audit_verifies(cluster)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]


def test_prefect_ran_it_all_on_postgresql(cluster: Cluster) -> None:
    """The lifecycle and node runs are rows of the PostgreSQL database, asked from inside the plane."""
    sql = (
        "select f.name, r.state_type, count(*) from flow_run r join flow f on f.id = r.flow_id"
        " group by f.name, r.state_type"
    )

    def runs() -> dict[str, int]:
        return {f"{name}:{state}": int(n) for name, state, n in _postgres(cluster, sql)}

    def done() -> bool:
        seen = runs()
        return seen.get("job-lifecycle:COMPLETED", 0) >= 3 and seen.get("sandboxed-train:COMPLETED", 0) >= 3

    # A lifecycle run completes after archiving, a moment after its job is released.
    assert wait_until(done, timeout=180, interval=3.0), runs()
