"""Helpers of the multi-host e2e (``test_multihost.py``): the coordinator's store, submissions from a user's
host, Prefect's PostgreSQL asked from inside the control plane, the audit log, and what explains a job.

Everything runs against a :class:`infra.cluster.Cluster`; nothing here starts one."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from infra.cluster import Cluster
from infra.netns import SERVICE_ADDRESS
from tests.e2e.lifecycle_conftest import wait_until
from tests.infra.test_netns import PROBE

NODES = ("node-1", "node-2", "node-3")
USERS = ("demo-user", "user-2")
AUDIT_VERIFY = (sys.executable, "-m", "cyxwiz.cli", "audit", "verify")


def coordinator_store(cluster: Cluster) -> Any:
    from cyxwiz.coordinator.store import CoordinatorStore

    return CoordinatorStore.from_url(cluster.ready["coordinator_db"])


def heartbeats(cluster: Cluster) -> dict[str, Any]:
    from tasks.coordinator_channel import node_name

    store = coordinator_store(cluster)
    try:
        return {node_name(r.subject): r.last_heartbeat for r in store.list_nodes() if r.last_heartbeat}
    finally:
        store.engine.dispose()


def wait_for_node(cluster: Cluster, name: str) -> None:
    if wait_until(lambda: name in heartbeats(cluster), timeout=180, interval=1.0):
        return
    log = (cluster.home / "agents" / name / "agent.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"{name} never registered from its namespace:\n{log}")


def probe(cluster: Cluster, host: Any, ports: list[int]) -> dict[int, str]:
    proc = cluster.run(host, [sys.executable, "-c", PROBE, SERVICE_ADDRESS, *map(str, ports)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {int(k): v for k, v in json.loads(proc.stdout).items()}


def submit(cluster: Cluster, user: str, spec: dict[str, Any]) -> str:
    path = cluster.home / f"spec-{user}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    proc = cluster.job_cli(user, "submit", str(path), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"job-[0-9a-f]+", proc.stdout)
    assert found, proc.stdout
    return found.group(0)


def job(cluster: Cluster, job_id: str) -> Any:
    store = coordinator_store(cluster)
    try:
        return store.job(job_id)
    finally:
        store.engine.dispose()


def submit_assigned(cluster: Cluster, user: str, spec: dict[str, Any]) -> str:
    """Submit as ``user`` and wait until the job is dispatched: the next job then sees this node busy."""
    job_id = submit(cluster, user, spec)
    assert wait_until(lambda: job(cluster, job_id).node_id, timeout=300, interval=1.0), explain(
        cluster, job_id
    )
    return job_id


def postgres(cluster: Cluster, sql: str, *args: str) -> list[list[Any]]:
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


def explain(cluster: Cluster, job_id: str) -> str:
    """What happened to ``job_id``: its lifecycle's and node run's states and Prefect logs (PostgreSQL, gone
    with the cluster otherwise), its audit events and the agents' log tails; also written to the home."""
    record = job(cluster, job_id)
    parts = [
        f"job {job_id}: {record.status} on {record.node_id} for {record.user_id}, progress {record.progress}"
    ]
    with contextlib.suppress(Exception):
        runs = postgres(
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


def audit_verifies(cluster: Cluster) -> subprocess.CompletedProcess[str]:
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


def node_names(cluster: Cluster) -> dict[str, str]:
    """Node id (its PeerID) -> node name (its certificate's CN)."""
    from tasks.coordinator_channel import node_name

    store = coordinator_store(cluster)
    try:
        return {n.node_id: node_name(n.subject) for n in store.list_nodes()}
    finally:
        store.engine.dispose()


def sandbox_running(cluster: Cluster, name: str) -> bool:
    """True while a job sandbox (bubblewrap) runs on node ``name``'s host: its run is in training."""
    pids = subprocess.run(
        ["ip", "netns", "pids", cluster.host(name).name], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"bwrap"):
                return True
    return False


def audit_events(cluster: Cluster) -> list[dict[str, Any]]:
    from cyxwiz.audit.reader import iter_events

    return [stored.event for stored in iter_events(cluster.home / "audit")]


def refused_since(cluster: Cluster, *, actor: str, since: dt.datetime) -> list[dict[str, Any]]:
    """Authorization refusals (H2) of ``actor``'s calls recorded after ``since``, by the coordinator (the
    resource names the job) and the gateway (it names the flow run)."""
    return [
        e
        for e in audit_events(cluster)
        if e.get("event_type") == "Authorization"
        and e.get("outcome") != "success"
        and e.get("actor_id") == actor
        and dt.datetime.fromisoformat(str(e["timestamp"])) > since
    ]


#: Run as a node inside its own host (its agent's certificate and session): fetch a job token for JOB, say
#: so, wait for a line on stdin, then make the calls a node cut off mid-job makes once the cut heals (its
#: progress, its proof) and ask for a new job token; print each status. Fixed code, the job id in argv; the
#: token never leaves the process.
LATE_CALLS = """
import json, sys, httpx
from agents.node_client import client_ssl_context, read_session
from agents.settings import AgentSettings
job = sys.argv[1]
settings = AgentSettings.from_env()
session = read_session(settings)["session_token"]
tls = client_ssl_context(settings)
def call(method, path, bearer, body=None):
    with httpx.Client(base_url=settings.coordinator_url, verify=tls, timeout=30) as c:
        auth = {"authorization": f"Bearer {bearer}"}
        return c.request(method, f"/v1/jobs/{job}/{path}", json=body, headers=auth)
got = call("GET", "token", session)
print(json.dumps({"token": got.status_code}), flush=True)
token = got.json()["job_token"]
sys.stdin.readline()
late = {"proof": {"job_id": job, "note": "a late proof from a node cut off mid-job"}}
print(json.dumps({
    "progress": call("POST", "progress", token, {"step": 9, "total": 10}).status_code,
    "completion": call("POST", "completion", token, late).status_code,
    "token": call("GET", "token", session).status_code,
}), flush=True)
"""
