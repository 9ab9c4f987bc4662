"""Dispatch as one atomic claim: what racing control workers cost (issue 21; SPEC C3, F2).

``python -m bench dispatch``: ``JOBS`` jobs over ``NODES`` nodes, claimed by 1 process, then by
``PROCESSES`` processes racing for every job (each tries all of them; one wins, the others get a
ConflictError), on the embedded store (SQLite) and on PostgreSQL. Reported per store: wall time of the race
÷ wall time of one process claiming the same jobs (the serialisation cost of the lock), and the largest
number of jobs any node ended with (must be ``ceil(JOBS / NODES)``: the spread holds under the race).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

JOBS, NODES, PROCESSES = 40, 10, 4


def _world(url: str) -> list[str]:
    from cyxwiz.coordinator.store import CoordinatorStore

    store = CoordinatorStore.from_url(url)
    for i in range(NODES):
        node = store.register_node(
            peer_id=f"12D3KooWbench{i:04d}", subject=f"CN=b-{i}", cert_serial=f"{i + 1:x}", hardware={},
            wallet=f"W{i}",
        )  # fmt: skip
        store.heartbeat(node.node_id)
    jobs = [store.create_job(user_id="u", spec={}, duration_s=60).job_id for _ in range(JOBS)]
    store.engine.dispose()
    return jobs


def _claimer(url: str, jobs: list[str], barrier: Any, out: Any) -> None:
    from cyxwiz.coordinator.store import CoordinatorStore
    from cyxwiz.errors import ConflictError
    from tasks.coordinator_channel import SchedulerChannel

    channel = SchedulerChannel(store=CoordinatorStore.from_url(url))
    barrier.wait()
    started = time.perf_counter()
    for job_id in jobs:
        with contextlib.suppress(ConflictError):  # another process won it: what the race is about
            channel.assign(job_id)
    out.put(time.perf_counter() - started)


def _run(url: str, processes: int) -> tuple[float, int]:
    from cyxwiz.coordinator.store import CoordinatorStore

    jobs = _world(url)
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, jobs, barrier, out)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    wall = max(out.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join()
    store = CoordinatorStore.from_url(url)
    loads = Counter(store.job(j).node_id for j in jobs)
    assert None not in loads and sum(loads.values()) == JOBS
    return wall, max(loads.values())


def run() -> list[tuple[str, float, str]]:
    results: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": lambda n: f"sqlite:///{Path(tmp) / f'c{n}.db'}"}
        try:
            from infra.postgres import local_postgres

            pg = local_postgres(Path(tmp) / "pg.log")
            server = pg.__enter__()
        except Exception:  # pragma: no cover - no PostgreSQL binaries: SQLite only
            pg = None
        if pg is not None:
            urls["postgres"] = lambda n: _database(server.url("psycopg"), f"bench{n}")
        try:
            for name, url_of in urls.items():
                one, _ = _run(url_of(1), 1)
                race, worst = _run(url_of(PROCESSES), PROCESSES)
                why = f"{JOBS} jobs: {one * 1000 / JOBS:.1f} ms/claim alone, wall {race:.2f} s racing"
                results.append((f"{name}: {PROCESSES} racing / 1 process", race / one, why))
                results.append((f"{name}: most jobs on one node", float(worst),
                                f"goal {math.ceil(JOBS / NODES)} ({JOBS} jobs, {NODES} nodes)"))  # fmt: skip
        finally:
            if pg is not None:
                pg.__exit__(None, None, None)
    return results


def _database(server_url: str, name: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name
