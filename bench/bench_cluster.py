"""Prefect on PostgreSQL vs SQLite (issue 21): the lifecycle's control-plane overhead on each, same run.

Two embedded stacks one after the other, identical but for the Prefect server's database: SQLite (the
embedded default) and PostgreSQL (``infra.postgres``, asyncpg driver, as production and the multi-host
harness run it). On each: one node agent, a warm-up job, then ``RUNS`` tiny jobs; the overhead of a job is
its lifecycle wall minus the training time inside the sandbox and the verification compute, as in
``bench_lifecycle``. Reported: median overhead on PostgreSQL ÷ on SQLite, and each wall.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.bench_lifecycle import _timed_job, stack_home

RUNS = 3


@contextlib.contextmanager
def _database(kind: str, home: Path) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
        return
    from infra.postgres import local_postgres

    with local_postgres(home / "postgres.log") as pg:
        yield pg.url("asyncpg")


def _measure(kind: str) -> list[dict[str, float]]:
    from infra.stack import embedded_stack

    with (
        stack_home(f"cyxb{kind[:2]}-") as home,
        _database(kind, home) as url,
        embedded_stack(home, say=lambda _m: None, nodes=("node-1",), prefect_database_url=url) as stack,
    ):
        stack.env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # the poll phase must not decide each run
        stack.start_agent("node-1")
        stack.wait_for_node("node-1")
        _timed_job(stack, "node-1")  # warm-up
        return [_timed_job(stack, "node-1") for _ in range(RUNS)]


def run() -> list[tuple[str, float, str]]:
    results: dict[str, Any] = {}
    # Which database runs first (the shared machine's load drifts during a run): "postgresql,sqlite" swaps.
    order = os.environ.get("CYXWIZ_BENCH_CLUSTER_ORDER", "sqlite,postgresql").split(",")
    if sorted(order) != ["postgresql", "sqlite"]:
        raise ValueError("CYXWIZ_BENCH_CLUSTER_ORDER names sqlite and postgresql once each")
    for kind in order:
        jobs = _measure(kind)
        results[kind] = {
            "overhead": statistics.median(j["wall"] - j["training"] - j["verify"] for j in jobs),
            "wall": statistics.median(j["wall"] for j in jobs),
        }
    pg, lite = results["postgresql"], results["sqlite"]
    return [
        (
            "lifecycle overhead, PostgreSQL / SQLite",
            pg["overhead"] / lite["overhead"],
            f"control-plane overhead {pg['overhead']:.1f} s on PostgreSQL vs {lite['overhead']:.1f} s on "
            f"SQLite, median of {RUNS} tiny jobs each (report)",
        ),
        (
            "lifecycle wall, PostgreSQL / SQLite",
            pg["wall"] / lite["wall"],
            f"{pg['wall']:.1f} s vs {lite['wall']:.1f} s",
        ),
    ]
