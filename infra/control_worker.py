"""The control worker: Prefect's process worker on the ``control`` pool, started after a recovery step.

``python -m infra.control_worker [--pool control] [--name NAME]`` first marks CRASHED the flow runs that a
worker of the same name left behind on this host when it died (:func:`tasks.sweep.crash_orphans_of`), then
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


def recover(name: str) -> list[str]:
    """The runs marked CRASHED; a Prefect API that does not answer yet recovers nothing (the sweep's
    silence rule still settles them later), it never keeps the worker from starting."""
    from tasks.sweep import crash_orphans_of

    try:
        return crash_orphans_of(name)
    except Exception as exc:  # the API is down or restarting: not a reason to leave the pool unserved
        print(f"control worker: orphan recovery skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    crashed = recover(args.name)
    if crashed:
        print(f"control worker {args.name!r}: orphaned runs marked CRASHED: {', '.join(crashed)}")
    sys.stdout.flush()
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
