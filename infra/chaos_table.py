"""The chaos table (issue 21): each lifecycle step × each process → kill -9 there, restart, outcome.

``python -m infra.chaos_table [--cells ci|all|PROCESS@STEP,...] [--doc docs/chaos.md] [--results
bench/RESULTS.md] [--json FILE]`` brings :func:`infra.chaos.chaos_stack` up once and runs every cell
against it, one job each. (The partition, a node cut off from the control plane mid-job, is iptables in
the node's own namespace on the multi-host harness: tests/e2e/test_multihost.py.)

After every cell: the job is terminal (escrow released or refunded and its lifecycle run final), the
token supply (every wallet plus every escrow) is what it was, nothing was paid twice (one settle
transaction per escrow; the node paid only when released, and only the node that ran the accepted
attempt), and the audit log verifies. A cell whose process takes no part in its step is ``n/a``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.chaos import NODE_LOST_S, ChaosStack, chaos_stack

STEPS = ("lock", "dispatch", "training", "proof-upload", "verification", "release", "archive")
PROCESSES = ("control", "agent", "coordinator", "gateway", "ledger", "verifier", "prefect")
#: Which processes take part in which step (the others are n/a there: killing them changes nothing).
INVOLVED: dict[str, frozenset[str]] = {
    "control": frozenset(STEPS),  # the control worker and the lifecycle run it is the parent of
    "prefect": frozenset(STEPS),  # every task reports its state to it
    "agent": frozenset({"dispatch", "training", "proof-upload"}),
    "coordinator": frozenset({"dispatch", "training", "proof-upload"}),  # job token, progress, URLs, proof
    "gateway": frozenset({"dispatch", "training", "proof-upload"}),  # the node's only way to Prefect
    "ledger": frozenset({"lock", "dispatch", "release"}),  # lock tx, stake check, settle tx
    "verifier": frozenset({"verification", "release"}),  # verdict, co-signature
}
#: What ``make test`` runs (tests/e2e/test_chaos.py); the rest is in docs/chaos.md from a full run. The
#: control worker's cell checks its restart recovery (infra/control_worker.py) on the real processes; the
#: silence rule for a worker that never returns is checked in tests/flows/test_escrow_sweep.py.
CI_CELLS = (
    ("agent", "training"),
    ("prefect", "verification"),
    ("ledger", "release"),
    ("control", "training"),
)
SWEEP_INTERVAL_S = 10.0
LIFECYCLE = "job-lifecycle/job-lifecycle"


@dataclass(kw_only=True)
class Cell:
    process: str
    step: str
    observed: str = ""
    outcome: str = ""
    paid_to: str | None = None
    redispatched: bool = False
    recovery_s: float = 0.0
    sweep_settled: bool = False
    terminal: bool = False
    supply_ok: bool = False
    paid_once: bool = False
    audit_ok: bool = False
    note: str = ""
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.terminal and self.supply_ok and self.paid_once and self.audit_ok

    def label(self) -> str:
        mark = "✓" if self.ok else "✗"
        where = "" if self.observed == self.step else f" (at {self.observed})"
        moved = " re-dispatched," if self.redispatched else ""
        return f"{mark}{moved} {self.outcome} {self.recovery_s:.0f} s{where}"


def reference_job(user: str = "demo-user") -> dict[str, Any]:
    from infra.demo import REFERENCE_JOB

    spec = copy.deepcopy(REFERENCE_JOB)
    spec["user"] = user
    spec["training"]["hyperparameters"]["epochs"] = 2
    # An honest 2-epoch run's holdout accuracy is a draw (per-job secret, secret split): below the demo's
    # 0.85 about once in 200, a refund no kill caused (see tests/e2e/lifecycle_conftest.py).
    spec["task"]["threshold"] = 0.7
    spec["limits"]["wall_seconds"] = 240
    return spec


class Runner:
    """Cells against one :class:`ChaosStack`; every check reads the real ledger, store and audit log."""

    def __init__(self, chaos: ChaosStack, *, down_s: float = 0.0) -> None:
        self.chaos = chaos
        #: How long a killed part stays down before its restart (a slow restart on a loaded host).
        self.down_s = down_s
        self.stack = chaos.stack
        self.jobs: list[str] = []

    # -- observations ------------------------------------------------------------------------------

    def supply(self) -> int:
        from tasks import services

        wallets = {k: v for k, v in self.stack.balances().items() if ":" in k}
        from cyxwiz.errors import NotFoundError

        held = 0
        for job_id in self.jobs:
            with contextlib.suppress(NotFoundError):  # a job that never got as far as its lock
                held += services.ledger().onchain_amount(job_id=job_id)
        return sum(wallets.values()) + held

    def node_name(self, node_id: str | None) -> str | None:
        from tasks.coordinator_channel import node_name

        for record in self.stack.coordinator.store.list_nodes():
            if record.node_id == node_id:
                return node_name(record.subject)
        return None

    def step_now(self, job_id: str, run_id: str) -> str | None:  # noqa: PLR0911 (one answer per step)
        """The step the job is in, from what each step writes first (cheap reads before API calls)."""
        from cyxwiz.errors import NotFoundError
        from cyxwiz.ledger.store import EscrowState
        from cyxwiz.storage import layout
        from tasks import services

        try:
            record = services.ledger().status(job_id=job_id)
        except NotFoundError:
            return None
        if record.state in (EscrowState.RELEASED, EscrowState.REFUNDED):
            return "archive"
        if record.state in (EscrowState.SETTLING, EscrowState.RELEASING, EscrowState.REFUNDING):
            return "release"
        status = self._job_status(job_id)
        if status == "verifying":
            # The verifier's answer becomes an artifact first; then the verdict event and the settle.
            return "release" if self._verified(job_id) else "verification"
        outputs = Path(self.stack.store.body_path(layout.job_output(job_id, "x"))).parent
        if outputs.is_dir() and any(outputs.iterdir()):
            return "proof-upload"
        if status == "running":
            return "training"
        if Path(self.stack.store.body_path(layout.job_input(job_id, "dataset.npz"))).exists():
            return "dispatch"
        return "lock"

    def _job_status(self, job_id: str) -> str | None:
        from cyxwiz.errors import NotFoundError

        try:
            return str(self.stack.coordinator.store.job(job_id).status)
        except NotFoundError:
            return None

    def _verified(self, job_id: str) -> bool:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"verification-{job_id}"])),
                limit=1,
            )
        return bool(found)

    def run_final(self, run_id: str) -> bool:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(run_id)).state
        return bool(state and state.is_final())

    def run_state(self, run_id: str) -> str:
        """The lifecycle run's final state and who set it (``CRASHED: its worker … restarted …``)."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(run_id)).state
        return f"{state.type.value}: {state.message or ''}" if state else "none"

    # -- one cell ----------------------------------------------------------------------------------

    def submit(self, node: str = "node-1") -> tuple[str, str, int]:
        from prefect.deployments import run_deployment

        spec = self.stack.fund(reference_job())
        job_id = str(spec["funding"]["job_id"])
        run = run_deployment(LIFECYCLE, parameters={"spec": spec, "node": node}, timeout=0)
        self.jobs.append(job_id)
        return job_id, str(run.id), int(spec["payment"])  # type: ignore[union-attr]

    def wait_for(self, job_id: str, run_id: str, step: str, *, timeout: float = 300) -> str:
        """Poll until the job has reached ``step`` (or a later one): the step actually observed."""
        order = {s: i for i, s in enumerate(STEPS)}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.step_now(job_id, run_id)
            if now is not None and order[now] >= order[step]:
                if step in ("training", "verification") and now == step:
                    time.sleep(1.5)  # well inside the step, not at its first instant
                    # A short step may be over by now (verification takes < 1 s on an idle host): the
                    # cell says where the kill really landed.
                    now = self.step_now(job_id, run_id) or now
                return now
            time.sleep(0.02)
        raise TimeoutError(f"{job_id} did not reach {step} in {timeout:.0f} s")

    def run(self, process: str, step: str, *, node: str = "node-1") -> Cell:
        cell = Cell(process=process, step=step)
        if step not in INVOLVED[process]:
            cell.outcome = "n/a"
            return cell
        self.supervise(cell)
        before = self.supply()
        wallets_before = self.stack.balances()
        job_id, run_id, payment = self.submit(node)
        cell.observed = self.wait_for(job_id, run_id, step)
        killed_at = time.monotonic()
        if process == "agent":
            target = self.node_name(self.stack.coordinator.store.job(job_id).node_id) or node
            service = self.chaos.services[f"agent:{target}"]
            service.kill()
            self._wait_moved_or_settled(job_id, node_id=self.stack.coordinator.store.job(job_id).node_id)
            service.restart()  # the host is back after the lifecycle took it for lost
        else:
            self.chaos.services[process].kill()
            time.sleep(self.down_s)
            self.chaos.services[process].restart()
            cell.checks["back_after_s"] = round(time.monotonic() - killed_at, 1)
        self.settle(cell, job_id, run_id, killed_at=killed_at)
        self.check(cell, job_id, payment=payment, before=before, wallets_before=wallets_before)
        if process == "control":  # who ended the run it died with: the restarted worker, or the silence rule
            cell.checks["lifecycle_run"] = self.run_state(run_id)
            if "restarted" not in cell.checks["lifecycle_run"]:  # the worker's own account of its recovery
                log = self.stack.home / "control-worker" / "worker.log"
                lines = log.read_text(errors="replace").splitlines() if log.exists() else []
                cell.checks["recovery_log"] = [line for line in lines if "orphan" in line][-6:]
        return cell

    def supervise(self, cell: Cell) -> None:
        """Start again every part that exited on its own, as systemd's ``Restart=always`` does in
        production (infra/systemd); the cell's note names it. Without this a part that gave up (a Prefect
        worker exits once its polling loop fails too often) stalls every later cell of the table."""
        for name, service in self.chaos.services.items():
            if not service.alive():
                cell.note += f" {name} had exited on its own: restarted;"
                service.kill()  # reaps it (and any child it left)
                service.restart()

    def attempt(self, process: str, step: str) -> Cell:
        """:meth:`run`, a harness failure (a step never reached, a part that would not restart) recorded
        as a failed cell rather than ending the table; every part is started again for the next cell."""
        try:
            return self.run(process, step)
        except Exception as exc:  # the table shows it; the next cell gets a whole stack again
            failed = Cell(
                process=process, step=step, outcome="harness error", note=f"{type(exc).__name__}: {exc};"
            )
            self.supervise(failed)
            return failed

    def _wait_moved_or_settled(self, job_id: str, *, node_id: str | None) -> None:
        from tasks import services

        def moved() -> bool:
            state = services.ledger().status(job_id=job_id).state.value
            return self.stack.coordinator.store.job(job_id).node_id != node_id or state in (
                "released",
                "refunded",
            )

        _until(moved, timeout=NODE_LOST_S + 120)

    def settle(self, cell: Cell, job_id: str, run_id: str, *, killed_at: float, timeout: float = 600) -> None:
        """Sweep every ``SWEEP_INTERVAL_S`` (as the escrow-sweep schedule does) until the job is terminal."""
        from tasks import services
        from tasks.recover import FINISHED, sweep_once
        from tasks.sweep import reap_lifecycles

        deadline = time.monotonic() + timeout
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        while time.monotonic() < deadline:
            state = services.ledger().status(job_id=job_id).state.value
            row = self._job_status(job_id)
            # A refund's row may also say cancelled (the rollback revoked the job token) or failed.
            closed = row == state or (state == "refunded" and row in FINISHED)
            if state in ("released", "refunded") and closed and self.run_final(run_id):
                cell.terminal = True
                break
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                self.supervise(cell)
                try:
                    swept = sweep_once()
                    reaped = reap_lifecycles()  # what the escrow-sweep flow does after sweep_once
                except Exception as exc:  # a part is still restarting: the next sweep retries
                    cell.note += f" sweep failed once: {type(exc).__name__};"
                    continue
                report = swept["report"]
                # Not report.reconciled: a live lifecycle's release in flight is driven by both, harmlessly.
                settled = [r.job_id for r in (*report.refunded, *report.released)]
                settled += [f["job_id"] for f in swept["finished"]]
                if run_id in reaped:
                    cell.note += " run marked crashed by the sweep;"
                cell.sweep_settled = cell.sweep_settled or job_id in settled
            time.sleep(0.5)
        cell.recovery_s = round(time.monotonic() - killed_at, 1)
        record = services.ledger().status(job_id=job_id)
        cell.outcome = record.state.value
        cell.paid_to = (
            self.node_name(self.stack.coordinator.store.job(job_id).node_id)
            if record.state.value == "released"
            else None
        )
        if cell.sweep_settled:
            cell.outcome += " by the sweep"

    def check(
        self, cell: Cell, job_id: str, *, payment: int, before: int, wallets_before: dict[str, int]
    ) -> None:
        from cyxwiz.ledger.store import IntentStatus
        from tasks import services

        ledger = services.ledger()
        after = self.stack.balances()
        cell.supply_ok = self.supply() == before
        settles = [
            i for i in ledger.store.intents(job_id, status=IntentStatus.CONFIRMED) if i.kind != "create"
        ]
        gained = {k: after[k] - wallets_before.get(k, 0) for k in after if k.startswith("node:")}
        released = cell.outcome.startswith("released")
        expected = {k: (payment if released and k == f"node:{cell.paid_to}" else 0) for k in gained}
        cell.paid_once = len(settles) == 1 and gained == expected
        # One read of the audit log serves both: was the job re-dispatched, and why was it refunded.
        job_events = [e for e in _events(self.stack.home / "audit") if e.get("resource") == f"job:{job_id}"]
        cell.redispatched = any(e.get("action") == "job.redispatch" for e in job_events)
        why = [e.get("details", {}).get("reason") for e in job_events if e.get("action") == "escrow.refund"]
        if cell.outcome.startswith("refunded") and why and why[-1]:  # the table says why, not only ✗
            cell.note += f" refunded: {why[-1]};"
        cell.audit_ok = _audit_verifies(self.stack.home / "audit")
        cell.checks.update(settle_transactions=len(settles), node_gains=gained)


def _events(directory: Path) -> list[dict[str, Any]]:
    from cyxwiz.audit.reader import iter_events

    return [stored.event for stored in iter_events(directory)]


def _audit_verifies(directory: Path) -> bool:
    """``verify`` may race a live append (a half-checkpointed tail): a broken chain fails every try."""
    from cyxwiz.audit.verify import verify_log
    from tasks import services

    for _ in range(3):
        if verify_log(directory, public_key=services.audit_public_key()).ok:
            return True
        time.sleep(2)
    return False


def _until(predicate: Any, *, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


# -- the table -------------------------------------------------------------------------------------


def select(spec: str) -> list[tuple[str, str]]:
    if spec == "all":  # every applicable cell; the control worker's last
        order = [p for p in PROCESSES if p != "control"] + ["control"]
        return [(p, s) for p in order for s in STEPS if s in INVOLVED[p]]
    if spec == "ci":
        return list(CI_CELLS)
    cells = []
    for item in spec.split(","):
        process, _, step = item.partition("@")
        if process not in PROCESSES or step not in STEPS:
            raise SystemExit(f"unknown cell {item!r}: PROCESS@STEP with {PROCESSES} and {STEPS}")
        cells.append((process, step))
    return cells


def render(cells: list[Cell], *, seconds: float) -> str:
    by = {(c.process, c.step): c for c in cells}
    head = "| step \\ process | " + " | ".join(PROCESSES) + " |"
    rows = [head, "|" + "---|" * (len(PROCESSES) + 1)]
    for step in STEPS:
        entries = []
        for process in PROCESSES:
            cell = by.get((process, step))
            if step not in INVOLVED[process]:
                entries.append("n/a")
            elif cell is None:
                entries.append("not run")
            else:
                entries.append(cell.label())
        rows.append(f"| {step} | " + " | ".join(entries) + " |")
    lines = [*rows, ""]
    failed = [c for c in cells if c.outcome != "n/a" and not c.ok]
    lines.append(
        f"- cells run: {sum(c.outcome != 'n/a' for c in cells)}, failed: {len(failed)}, in {seconds:.0f} s"
    )
    for cell in failed:
        lines.append(f"  - ✗ {cell.process}@{cell.step}: {json.dumps(asdict(cell), default=str)}")
    return "\n".join(lines) + "\n"


def _write(args: argparse.Namespace, cells: list[Cell], started: float) -> str:
    table = render(cells, seconds=time.monotonic() - started)
    if args.table:
        args.table.write_text(table, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(c), "ok": c.ok} for c in cells], default=str, indent=2))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.chaos_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="ci", help="ci | all | PROCESS@STEP,...")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--down", type=float, default=0.0, help="seconds a killed part stays down")
    parser.add_argument(
        "--keep", action="store_true", help="keep the stack's home (logs, audit) for a post-mortem"
    )
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="cyxch-", dir="/tmp"))  # short: the sandbox socket path limit
    started = time.monotonic()
    cells: list[Cell] = []
    try:
        with chaos_stack(home, nodes=("node-1", "node-2", "node-3")) as chaos:
            runner = Runner(chaos, down_s=args.down)
            for process, step in select(args.cells):
                cell = runner.attempt(process, step)
                print(f"{process}@{step}: {cell.label() if cell.outcome != 'n/a' else 'n/a'}", flush=True)
                cells.append(cell)
                _write(args, cells, started)  # a long table run leaves what it has measured so far
    finally:
        if args.keep:
            print(f"kept {home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(_write(args, cells, started))
    return 0 if all(c.ok or c.outcome == "n/a" for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
