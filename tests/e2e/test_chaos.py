"""Chaos (issue 21; SPEC F1, F2, H4, C3): kill -9 a part of the control plane at a lifecycle step, restart
it, and every job still ends released or refunded, the token supply is conserved, nothing is paid twice
and the audit log verifies; a node lost mid-job is re-dispatched to another node. (A node partitioned from
the control plane mid-job, iptables in its own network namespace: tests/e2e/test_multihost.py.)

One stack (``infra.chaos``), brought up once, serves every cell; the cells here are the ones ``make test``
can afford (``infra.chaos_table.CI_CELLS``: a node killed mid-training, the Prefect server killed during
verification, the ledger service killed during the release, the control worker killed mid-training and
restarted), about 5 min.
The full step × process table is ``python -m infra.chaos_table --cells all`` (docs/chaos.md holds the last
full run, the control worker's cells included; the rule that finds a dead lifecycle run is checked against
a real Prefect server in tests/flows/test_escrow_sweep.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.chaos_table import CI_CELLS

pytestmark = [pytest.mark.slow, pytest.mark.ci, pytest.mark.prefect, pytest.mark.timeout(1800)]
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("chaos") / "cells.json"
    proc = subprocess.run(
        [sys.executable, "-m", "infra.chaos_table", "--cells", "ci", "--json", str(out)],
        cwd=PROJECT, env=dict(os.environ), capture_output=True, text=True, timeout=1700, check=False,
    )  # fmt: skip
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    found: list[dict[str, Any]] = json.loads(out.read_text())
    print(proc.stdout[-4000:])  # the table, in the test log
    return {f"{c['process']}@{c['step']}": c for c in found}


def _holds(cell: dict[str, Any]) -> None:
    assert cell["terminal"], cell  # released or refunded, its lifecycle run final
    assert cell["supply_ok"], cell  # every wallet + every escrow: the same total as before
    assert cell["paid_once"], cell  # one settle transaction; only the node that ran it, only if released
    assert cell["audit_ok"], cell  # the chain and its signed checkpoints verify (H4)


@pytest.mark.parametrize("process,step", CI_CELLS)
def test_killed_at_a_step_and_restarted_the_job_still_settles_once(
    cells: dict[str, dict[str, Any]], process: str, step: str
) -> None:
    _holds(cells[f"{process}@{step}"])


def test_a_restarted_control_worker_ends_the_run_it_died_with_so_the_next_sweep_settles_it(
    cells: dict[str, dict[str, Any]],
) -> None:
    """Not the silence rule (``run_silent_s``): the restarted worker marks its dead run CRASHED at once
    (infra/control_worker.py), and the sweep refunds the escrow the run had locked (F2)."""
    cell = cells["control@training"]
    assert cell["outcome"] == "refunded by the sweep", cell
    assert "restarted" in cell["checks"]["lifecycle_run"], cell["checks"]
    assert cell["checks"]["lifecycle_run"].startswith("CRASHED"), cell["checks"]


def test_a_node_killed_mid_training_is_replaced_and_only_the_replacement_is_paid(
    cells: dict[str, dict[str, Any]],
) -> None:
    cell = cells["agent@training"]
    assert cell["redispatched"], cell
    assert cell["outcome"] == "released" and cell["paid_to"] not in (None, "node-1"), (cell["note"], cell)
    assert cell["checks"]["node_gains"]["node:node-1"] == 0, cell
