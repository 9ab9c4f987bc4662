"""Helpers of the whole-lifecycle tests on an embedded stack (issue 9 acceptance): the tiny reference job,
control-plane config changes, the evil node's deployment, reading reports and the audit log, polling.

The stack of the lifecycle, datasets and referee modules is ``tests/e2e/lifecycle/conftest.py``'s (one for
the package); other e2e modules that start their own stack use these helpers too.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
EVIL_DEPLOYMENT = "sandboxed-train/evil-train"


#: The holdout accuracy these tests ask for. Not the demo's 0.85: the per-job secret (init, order) and the
#: secret holdout split make every honest run's accuracy a draw, and a 2-epoch run falls below 0.85 about
#: once in 200 (mean 0.91, lowest 0.844 over 200 secrets) — a refund, "verification passed=False", in a
#: test about something else. A model below the user's threshold is tested where that is the point.
TEST_THRESHOLD = 0.7

#: How often the Prefect workers a test stack starts (node agents, the control worker) ask for runs: 2 s
#: instead of Prefect's default 10 s, so a dispatch waits ~1 s for pick-up instead of ~5 s. What the tests
#: check never depends on the interval (the chaos and multi-host harnesses use 1 s and 2 s too).
POLL_S = 2
#: Their environment for it: ``stack.env.update(QUICK_POLL)`` before starting them.
QUICK_POLL = {"PREFECT_WORKER_QUERY_SECONDS": str(POLL_S)}


def tiny_job(
    *, epochs: int = 4, wall_seconds: int = 300, user: str = "demo-user", threshold: float = TEST_THRESHOLD
) -> dict[str, Any]:
    """The demo's reference job (MLP on scikit-learn digits) with a chosen length."""
    from infra.demo import REFERENCE_JOB

    spec = copy.deepcopy(REFERENCE_JOB)
    spec["user"] = user
    spec["training"]["hyperparameters"]["epochs"] = epochs
    spec["limits"]["wall_seconds"] = wall_seconds
    spec["task"]["threshold"] = threshold
    return spec


def set_control_config(stack: Any, **changes: Any) -> Any:
    """Rewrite the control-plane config file and make this process reopen its parts; returns the old one."""
    from tasks import services
    from tasks.config import ControlPlaneConfig

    old = ControlPlaneConfig.from_file(stack.config_path)
    dataclasses.replace(old, **changes).to_file(stack.config_path)
    services.reset()
    return old


def restore_control_config(stack: Any, old: Any) -> None:
    from tasks import services

    old.to_file(stack.config_path)
    services.reset()


def deploy_evil(stack: Any, tmp: Path) -> str:
    """Deploy the dishonest node flow to the gpu pool (``prefect --no-prompt deploy``, tmp prefect.yaml)."""
    from infra.stack import deploy_one

    deploy_one(
        stack.env,
        tmp,
        name="evil-train",
        entrypoint="tests/e2e/evil/evil_train.py:sandboxed_train",
        pool="gpu",
    )
    return EVIL_DEPLOYMENT


def verification_report(stack: Any, job_id: str) -> dict[str, Any]:
    """The archived verification report of a job (``jobs/{id}/verification.json``)."""
    from cyxwiz.storage import layout

    report: dict[str, Any] = json.loads(stack.store.get_bytes(layout.job_verification(job_id)))
    return report


def audit_events(stack: Any, *, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every event of the stack's audit log, oldest first (records are written through, no flush needed);
    ``since``: only those from then on (a stack shared by several modules holds theirs too)."""
    from cyxwiz.audit.reader import iter_events

    events = [stored.event for stored in iter_events(stack.home / "audit")]
    if since is None:
        return events
    return [e for e in events if dt.datetime.fromisoformat(str(e["timestamp"])) >= since]


def node_id_of(stack: Any, name: str) -> str:
    from tasks.coordinator_channel import node_name

    for record in stack.coordinator.store.list_nodes():
        if node_name(record.subject) == name:
            return str(record.node_id)
    raise LookupError(name)


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None
