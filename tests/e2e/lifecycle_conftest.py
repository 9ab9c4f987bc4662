"""Fixtures and helpers of the whole-lifecycle tests: one embedded stack per module (issue 9 acceptance).

Imported explicitly by ``test_lifecycle.py`` (not a conftest: the stack is expensive and only those tests
want it). The stack is the one ``make demo`` runs: Prefect server, dev PKI, LiteSVM ledger service,
coordinator + gateway over mTLS, node agents as separate processes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[2]
EVIL_DEPLOYMENT = "sandboxed-train/evil-train"


#: The holdout accuracy these tests ask for. Not the demo's 0.85: the per-job secret (init, order) and the
#: secret holdout split make every honest run's accuracy a draw, and a 2-epoch run falls below 0.85 about
#: once in 200 (mean 0.91, lowest 0.844 over 200 secrets) — a refund, "verification passed=False", in a
#: test about something else. A model below the user's threshold is tested where that is the point.
TEST_THRESHOLD = 0.7


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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The embedded control plane with node-1 running; node-2 has a certificate and a wallet mapping."""
    from infra.stack import embedded_stack
    from tasks import services

    saved = dict(os.environ)
    # A short home: the node's sandbox work dir lives under it and its bridge socket path must stay under
    # the AF_UNIX limit (pytest's tmp dirs are too deep for jobdir/work/bridge/bridge.sock).
    del tmp_path_factory
    home = Path(tempfile.mkdtemp(prefix="cyxlc-", dir="/tmp"))
    try:
        with embedded_stack(
            home, say=lambda _m: None, nodes=("node-1", "node-2"), lifecycle_deployment=True
        ) as built:
            built.start_agent("node-1")
            built.wait_for_node("node-1")
            yield built
    finally:
        # embedded_stack points this process at its server and config; leave the session as we found it.
        os.environ.clear()
        os.environ.update(saved)
        services.reset()
        shutil.rmtree(home, ignore_errors=True)


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


def audit_events(stack: Any) -> list[dict[str, Any]]:
    """Every event of the stack's audit log, oldest first (records are written through, no flush needed)."""
    from cyxwiz.audit.reader import iter_events

    return [stored.event for stored in iter_events(stack.home / "audit")]


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
