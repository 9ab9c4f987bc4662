"""One racing control worker for tests/coordinator/test_dispatch_race.py, as its own process.

``python -m tests.coordinator._race_worker URL SEED GO_FILE JOB...``: opens its own store and channel,
prints ``ready``, waits for GO_FILE (the start line every worker waits at), then dispatches every job in
its own order and prints the outcomes as one JSON line. A fresh interpreter rather than a fork: a fork of
the pytest process copies whatever locks its other threads held at that moment.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import ConflictError
from tasks.coordinator_channel import SchedulerChannel


def main(argv: list[str]) -> int:
    url, seed, go, job_ids = argv[0], int(argv[1]), Path(argv[2]), argv[3:]
    channel = SchedulerChannel(store=CoordinatorStore.from_url(url))
    order = list(job_ids)
    random.Random(seed).shuffle(order)
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.005)
    results: list[tuple[str, str, str]] = []
    for job_id in order:
        try:
            results.append((job_id, "ok", channel.assign(job_id)["node_id"]))
        except ConflictError as exc:
            results.append((job_id, "conflict", exc.message))
    print(json.dumps(results), flush=True)
    channel.store.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
