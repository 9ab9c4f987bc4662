"""Lifecycle cost (issue 9): control-plane overhead of one tiny job vs a bare Prefect flow of the same shape.

Both run against the same Prefect server in the same run. The lifecycle is ``job_lifecycle`` on the
embedded stack (escrow on LiteSVM, coordinator + gateway over mTLS, a cyxwiz-sandbox node agent, bubblewrap,
verification with replay, archive, audit). The baseline is a bare flow with the same 7 tasks whose
``run-on-node`` task runs a bare 5-task child deployment through a plain process worker — the same
orchestration shape (deployment run, worker poll, process start) with no work in any task.

Reported: (a) control-plane overhead = lifecycle wall − training time inside the sandbox (the proof's own
start/end) − verification compute (holdout + replay), ÷ the bare flow's wall (goal ≤ 1.5×); (b) the raw
lifecycle wall ÷ bare wall; (c) jobs per minute with 1 agent (sequential) and 2 agents (two jobs at once).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, task

PROJECT = Path(__file__).resolve().parents[1]
RUNS = 3
CHILD_DEPLOYMENT = "bare-child/bare-child"


@task
def _noop(value: Any = None) -> Any:
    return value


@flow(name="bare-child")
def bare_child(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """The 5 steps of ``sandboxed-train`` (fetch, train, sign, upload, submit), doing nothing."""
    for _ in range(5):
        _ = _noop(job_id)
    return {"job_id": job_id, "job": job}


@task(name="run-bare-child")
def _run_child(job_id: str) -> str:
    from prefect.deployments import run_deployment

    run: Any = run_deployment(
        CHILD_DEPLOYMENT,
        parameters={"job_id": job_id, "job": {"x": 1}},
        timeout=300,
        work_queue_name="default",
    )
    return run.state.type.value if run.state else "UNKNOWN"


@flow(name="bare-parent")
def bare_parent(job_id: str) -> str:
    """validate, lock, dispatch, run-on-node (→ child deployment), verify, settle, archive."""
    for _ in range(3):
        _ = _noop(job_id)
    state = _run_child(job_id)
    for _ in range(3):
        _ = _noop(job_id)
    return state


def _deploy_baseline(stack: Any, tmp: Path) -> subprocess.Popen[bytes]:
    """The bare child on its own process-worker pool (same worker poll interval as the node agents)."""
    from infra.stack import deploy_one, prefect_cli

    prefect_cli("work-pool", "create", "bench", "--type", "process", "--overwrite", env=stack.env)
    deploy_one(
        stack.env, tmp, name="bare-child", entrypoint="bench/bench_lifecycle.py:bare_child", pool="bench"
    )
    log = (tmp / "bench-worker.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "bench", "--type", "process"],
        env=stack.env,
        cwd=PROJECT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc


def _job(epochs: int = 4) -> dict[str, Any]:
    """The demo's reference job; fewer than its 4 epochs score under its 0.85 holdout threshold (refund)."""
    import copy

    from infra.demo import REFERENCE_JOB

    spec = copy.deepcopy(REFERENCE_JOB)
    spec["training"]["hyperparameters"]["epochs"] = epochs
    return spec


def _timed_job(stack: Any, node: str) -> dict[str, float]:
    from cyxwiz.verification.proof import SignedProof
    from flows.job_lifecycle import job_lifecycle

    started = time.perf_counter()
    summary = job_lifecycle(stack.fund(_job()), node=node)
    wall = time.perf_counter() - started
    if summary["settlement"]["state"] != "released":
        raise RuntimeError(f"bench job not released: {summary}")
    proof_doc = stack.coordinator.store.job(summary["job_id"]).proof
    proof = SignedProof.from_json(json.dumps(proof_doc)).proof
    training = (proof.finished() - proof.started()).total_seconds()
    verify = float(summary["verification"].get("training_checks_seconds") or 0.0)
    return {"wall": wall, "training": training, "verify": verify}


def _timed_bare() -> float:
    started = time.perf_counter()
    state = bare_parent(f"bare-{time.monotonic_ns()}")
    if state != "COMPLETED":
        raise RuntimeError(f"bare child ended {state}")
    return time.perf_counter() - started


def _concurrent(stack: Any, nodes: list[str]) -> float:
    errors: list[BaseException] = []

    def one(node: str) -> None:
        try:
            _timed_job(stack, node)
        except BaseException as exc:  # reported below
            errors.append(exc)

    # Prefect's settings (the stack's API URL) live in a context variable a new thread does not inherit;
    # without a copy each thread would quietly start its own temporary server.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, n)) for n in nodes]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


@contextlib.contextmanager
def stack_home(prefix: str) -> Iterator[Path]:
    """A scratch home for one embedded stack, under /tmp (short: the bridge socket's path limit); the
    process environment the stack changes and the cached control-plane parts are put back afterwards."""
    saved = dict(os.environ)
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)
        with contextlib.suppress(Exception):
            from tasks import services

            services.reset()
        shutil.rmtree(home, ignore_errors=True)


def run() -> list[tuple[str, float, str]]:
    from infra.local_server import stop_process_group
    from infra.stack import embedded_stack

    with (
        stack_home("cyxbench-") as home,
        embedded_stack(home, say=lambda _m: None, nodes=("node-1", "node-2")) as stack,
    ):
        # Workers poll every 10 s by default: the poll's phase, not the control plane, would decide
        # each run. Both the node agents and the baseline worker poll every second here.
        stack.env["PREFECT_WORKER_QUERY_SECONDS"] = "1"
        baseline_worker = _deploy_baseline(stack, home)
        try:
            stack.start_agent("node-1")
            stack.wait_for_node("node-1")
            _timed_job(stack, "node-1")  # warm-up: first imports, first sandbox start
            _timed_bare()
            jobs, bares = [], []
            for _ in range(RUNS):
                jobs.append(_timed_job(stack, "node-1"))
                bares.append(_timed_bare())
            stack.start_agent("node-2")
            stack.wait_for_node("node-2")
            two = _concurrent(stack, ["node-1", "node-2"])
        finally:
            stop_process_group(baseline_worker)
    wall = statistics.median(j["wall"] for j in jobs)
    overhead = statistics.median(j["wall"] - j["training"] - j["verify"] for j in jobs)
    training = statistics.median(j["training"] for j in jobs)
    verify = statistics.median(j["verify"] for j in jobs)
    bare = statistics.median(bares)
    return [
        (
            "control-plane overhead / bare flow",
            overhead / bare,
            f"lifecycle {wall:.1f} s − training {training:.1f} s − verification {verify:.1f} s = "
            f"{overhead:.1f} s vs bare 7+5-task flow with a deployment run {bare:.1f} s (goal ≤ 1.5)",
        ),
        ("lifecycle wall / bare flow", wall / bare, f"{wall:.1f} s vs {bare:.1f} s, median of {RUNS}"),
        ("jobs per minute, 1 agent", 60.0 / wall, f"sequential tiny jobs, {wall:.1f} s each"),
        ("jobs per minute, 2 agents", 2 * 60.0 / two, f"two jobs at once on node-1 and node-2: {two:.1f} s"),
    ]
