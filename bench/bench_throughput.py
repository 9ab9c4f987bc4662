"""Jobs per minute with 1, 2 and 4 node agents (issue 21): does the control plane keep more nodes busy?

The node side is sleep-bound, so the 2-core host is not what is measured: the bench deploys its own node
flow (``sandboxed-train/sleep-train``, below) to the gpu pool, which holds the node for ``SLEEP_S`` seconds
(a GPU busy with a long job costs the host no CPU) and then runs the real ``sandboxed-train`` steps on the
demo's reference job: fetch, train in the sandbox, sign the proof, upload, submit. Everything else is the real
lifecycle on the embedded stack: validate, user-signed escrow lock, dispatch by the scheduler (no pin),
token over mTLS, the agent's worker through the gateway, verification with replay, release, archive.

Each agent runs one job at a time (``python -m agents --limit 1``, a one-GPU node). With ``n`` agents,
``n`` clients each run ``JOBS_PER_CLIENT`` jobs back to back (closed loop, ``n`` jobs in flight); jobs per
minute = jobs ÷ wall. Reported: 4 agents ÷ 1 agent (goal ≥ 3), 2 ÷ 1, and each rate. With a per-job
control-plane and node cost ``c`` (CPU, shared by every job in flight), the ratio is 4 (S + c1) ÷ (S + c4):
the longer the node is busy, the less the 2-core host's share of each job decides it.
"""

from __future__ import annotations

import contextvars
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow, task

from bench.bench_lifecycle import stack_home
from flows.sandboxed_train import fetch_inputs, sign, submit, train, upload

#: How long the node is busy before the training starts (a constant: the node's flow-run process reads it).
SLEEP_S = 120.0
JOBS_PER_CLIENT = int(os.environ.get("CYXWIZ_BENCH_JOBS_PER_CLIENT", "1"))
AGENTS = (1, 2, 4)
DEPLOYMENT = "sandboxed-train/sleep-train"


@task(name="gpu-busy")
def gpu_busy(seconds: float) -> None:
    time.sleep(seconds)


@flow(name="sandboxed-train")
def sleep_train(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """``sandboxed-train`` after ``SLEEP_S`` seconds of a busy node; the same evidence, signed the same."""
    root = Path(os.environ.get("CYXWIZ_WORK_ROOT") or tempfile.gettempdir())
    jobdir = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=root))
    gpu_busy(SLEEP_S)
    inputs = fetch_inputs(job_id, job, str(jobdir / "inputs"))
    run = train(job_id, inputs, str(jobdir / "work"))
    proof = sign(job, run)
    outputs = upload(job_id, run)
    submit(job_id, proof)
    return {"job_id": job_id, "status": run.status, "outputs": outputs}


def _job() -> dict[str, Any]:
    import copy

    from infra.demo import REFERENCE_JOB

    return copy.deepcopy(REFERENCE_JOB)


def _closed_loop(stack: Any, clients: int) -> tuple[float, Counter[str], Counter[str]]:
    """``clients`` threads, each running ``JOBS_PER_CLIENT`` lifecycles one after the other (unpinned)."""
    from flows.job_lifecycle import job_lifecycle

    states: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            for _ in range(JOBS_PER_CLIENT):
                summary = job_lifecycle(stack.fund(_job()))
                with lock:
                    states[summary["settlement"]["state"]] += 1
                    nodes[summary["node"]] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    # Prefect's settings (the stack's API URL) live in a context variable a new thread does not inherit.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(client,)) for _ in range(clients)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started, states, nodes


def run() -> list[tuple[str, float, str]]:
    from infra.stack import deploy_one, embedded_stack

    names = [f"node-{i}" for i in range(1, max(AGENTS) + 1)]
    rates: dict[int, tuple[float, float, Counter[str], Counter[str]]] = {}
    with stack_home("cyxbt-") as home, embedded_stack(home, say=lambda _m: None, nodes=tuple(names)) as stack:
        stack.env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # the poll's phase must not decide each run
        deploy_one(
            stack.env,
            home,
            name="sleep-train",
            entrypoint="bench/bench_throughput.py:sleep_train",
            pool="gpu",
        )
        _use_deployment(stack, DEPLOYMENT)
        running = 0
        for agents in AGENTS:
            for name in names[running:agents]:
                stack.start_agent(name, limit=1)
            for name in names[running:agents]:
                stack.wait_for_node(name)
            if running == 0:
                _closed_loop_warm_up(stack)
            running = agents
            wall, states, nodes = _closed_loop(stack, agents)
            rates[agents] = (60.0 * agents * JOBS_PER_CLIENT / wall, wall, states, nodes)
    one = rates[1][0]
    rows = []
    for agents in AGENTS:
        rate, wall, states, nodes = rates[agents]
        spread = "/".join(str(n) for n in sorted(nodes.values(), reverse=True))
        rows.append(
            (
                f"jobs per minute, {agents} agent(s)",
                rate,
                f"{agents * JOBS_PER_CLIENT} jobs in {wall:.0f} s ({dict(states)}; jobs per node {spread})",
            )
        )
    rows.append(("jobs/min 2 agents / 1 agent", rates[2][0] / one, "closed loop, 2 jobs in flight vs 1"))
    rows.append(
        ("jobs/min 4 agents / 1 agent", rates[4][0] / one, f"goal ≥ 3; node busy {SLEEP_S:.0f} s/job")
    )
    return rows


def _use_deployment(stack: Any, deployment: str) -> None:
    """Point the lifecycle's node step at ``deployment`` (the control-plane config file, reopened)."""
    import dataclasses

    from tasks import services
    from tasks.config import ControlPlaneConfig

    config = ControlPlaneConfig.from_file(stack.config_path)
    dataclasses.replace(config, train_deployment=deployment).to_file(stack.config_path)
    services.reset()


def _closed_loop_warm_up(stack: Any) -> None:
    """One job first: imports, the first sandbox start and the deployment's first pull are not measured."""
    from flows.job_lifecycle import job_lifecycle

    summary = job_lifecycle(stack.fund(_job()))
    if summary["settlement"]["state"] != "released":
        raise RuntimeError(f"warm-up job not released: {summary}")
