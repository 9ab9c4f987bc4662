"""The verifier service verifies one job at a time (issue 16's four-job e2e found the race; SPEC F1).

Re-training draws from torch's process-wide generator; the service answers on several threads. Two
verifications at once made an honest node's step-0 checkpoint miss its seed: a fraud verdict.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tasks import services
from tasks.verifier_service import verify_hook


class _Stop(Exception):
    pass


def test_two_verifications_never_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    inside, overlaps = [0], [0]
    guard = threading.Lock()

    def fake_verify(**_: Any) -> Any:
        with guard:
            inside[0] += 1
            overlaps[0] = max(overlaps[0], inside[0])
        time.sleep(0.2)
        with guard:
            inside[0] -= 1
        raise _Stop

    monkeypatch.setattr(services, "verify_job", fake_verify)
    request = {
        "job_id": "job-" + "1" * 20, "user": "u", "payment": 1, "dataset": "sklearn:digits",
        "training_doc": {}, "memory_mb": 128, "wall_seconds": 5,
    }  # fmt: skip

    stopped: list[bool] = []

    def call() -> None:
        try:
            verify_hook({"request": request, "dispatched": {}})
        except _Stop:
            stopped.append(True)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stopped == [True, True, True]
    assert overlaps[0] == 1
