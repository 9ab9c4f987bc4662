"""The control worker: Prefect's process worker on the ``control`` pool, started after a recovery step.

``python -m infra.control_worker [--pool control] [--name NAME]`` marks CRASHED the flow runs that a worker
of the same name left behind on this host when it died (:func:`tasks.sweep.crash_orphans_of`, in a few
passes beside the worker: at once, then again while a busy API or a dying process may have hidden one), and
runs :class:`agents.control_worker.ControlWorker` on POOL under NAME: Prefect's process worker that starts
only the project's own deployments of that pool (prefect.yaml), with the entrypoint, command and
environment fixed locally, never taken from the Prefect API (issue 17; F1, C3). Without the first step a
``job-lifecycle`` run killed with its worker stays ``RUNNING`` until the escrow sweep's silence rule
(``run_silent_s``) gives up on it; with it, the next sweep settles the run's escrow (issue 21, F2).

The name must be unique per host and stable across restarts: it is how the restarted worker recognises
its own runs. The systemd unit passes ``cyxwiz-control``; the default is ``cyxwiz-control@<hostname>``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.control_worker",
        description="Recover this worker's orphaned flow runs (CRASHED), then run Prefect's process worker.",
    )
    parser.add_argument("--pool", default="control", help="work pool to poll (default: control)")
    parser.add_argument(
        "--name",
        default=f"cyxwiz-control@{socket.gethostname()}",
        help="worker name, unique per host and stable across restarts (default: cyxwiz-control@<hostname>)",
    )
    return parser.parse_args(argv)


#: Seconds after the start at which recovery looks again. A busy Prefect API (a restarted server, a host
#: under load) may not answer the first pass, and a run process killed with its worker may still be
#: leaving ``/proc`` (uninterruptible I/O) when the first pass reads it; each pass marks only what it
#: finds dead, so looking again is harmless. After the last one the sweep's silence rule remains.
RECOVERY_PASSES_S = (0.0, 3.0, 10.0, 30.0)


def recover(name: str) -> list[str]:
    """One pass: the runs marked CRASHED; a Prefect API that does not answer yet recovers nothing."""
    from tasks.sweep import crash_orphans_of

    try:
        return crash_orphans_of(name)
    except Exception as exc:  # the API is down or restarting: the next pass, or the silence rule
        print(f"control worker: orphan recovery pass failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []


def recover_in_passes(name: str, passes: tuple[float, ...] = RECOVERY_PASSES_S) -> list[str]:
    """:func:`recover` at each offset of ``passes`` from now (every run marked CRASHED, once each)."""
    started = time.monotonic()
    crashed: list[str] = []
    for offset in passes:
        time.sleep(max(0.0, started + offset - time.monotonic()))
        found = [run for run in recover(name) if run not in crashed]
        if found:
            print(f"control worker {name!r}: orphaned runs marked CRASHED: {', '.join(found)}", flush=True)
            crashed.extend(found)
    return crashed


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.stdout.flush()
    # Recovery never keeps the pool unserved: its later passes run beside the worker.
    threading.Thread(target=recover_in_passes, args=(args.name,), name="orphan-recovery", daemon=True).start()
    serve(args.pool, args.name)


def serve(pool: str, name: str) -> None:
    """The guarded worker until it is stopped: signals are handled as ``prefect worker start`` does (the
    first SIGTERM stops polling and lets the running flows finish, the second kills)."""
    import anyio
    from prefect.utilities.processutils import setup_signal_handlers_worker

    from agents.control_worker import ControlPolicy, ControlWorker

    policy = ControlPolicy.from_project(pool=pool)
    setup_signal_handlers_worker(os.getpid(), "the control worker", print)
    worker = ControlWorker(work_pool_name=pool, name=name, policy=policy, create_pool_if_not_found=False)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(worker.start)


if __name__ == "__main__":
    main()
