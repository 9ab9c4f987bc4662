"""``python -m agents``: start a node agent (see README "Node agent").

Reads ``CYXWIZ_*`` settings, opens the loopback mTLS tunnel to the gateway when ``CYXWIZ_GATEWAY_URL`` is
set (so the Prefect client's traffic never leaves the host in clear), registers and heartbeats with the
coordinator, then runs ``prefect worker start --type cyxwiz-sandbox`` on the node's own work queue.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from urllib.parse import urlsplit

from agents.settings import AgentSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents", description=__doc__)
    parser.add_argument("--pool", default="gpu", help="work pool to poll (default: gpu)")
    parser.add_argument(
        "--queue", default=None, help="work queue (default: the node id the coordinator gives)"
    )
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="most jobs this node runs at once (e.g. its GPUs; default: no limit); more wait in its queue",
    )
    parser.add_argument(
        "--max-jobs",
        type=int,
        default=None,
        help="most open jobs the coordinator gives this node (default: no cap); beyond it the scheduler "
        "picks another node or refuses the dispatch instead of queueing here",
    )
    args = parser.parse_args(argv)
    settings = AgentSettings.from_env()
    queue = args.queue or settings.node_name  # without a coordinator: a standalone worker
    stop = threading.Event()

    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if settings.coordinator_url:
            from agents.node_client import heartbeat_forever, register_node

            # The node's queue is its id (keyed by its certificate's PeerID), never its CN: a second
            # certificate with the same name shares nothing with this node (A5, C3).
            queue = args.queue or str(register_node(settings, max_jobs=args.max_jobs)["node_id"])
            beat = threading.Thread(
                target=heartbeat_forever, args=(settings, stop, args.heartbeat), daemon=True
            )
            beat.start()
        if settings.gateway_url:
            from agents.credentials import LiveCredentials
            from agents.node_client import client_ssl_context
            from agents.tunnel import running_tunnel

            parts = urlsplit(settings.gateway_url)
            endpoint = stack.enter_context(
                running_tunnel(
                    remote_host=parts.hostname or "127.0.0.1",
                    remote_port=parts.port or 443,
                    ssl_context=client_ssl_context(settings),
                    # The gateway wants the node's session token too (bound to its certificate, B2): the
                    # tunnel adds the current one to every request, so nothing is frozen into the worker's
                    # environment and a refreshed session or renewed certificate reaches it at once.
                    credentials=LiveCredentials(settings),
                )
            )
            env["PREFECT_API_URL"] = f"{endpoint.url}/api"
            env.pop("PREFECT_API_AUTH_STRING", None)
            # Cancellation works through the gateway: the observer's event subscription and its polling
            # fallback (``flow_runs/filter``) are both narrowed there to this node's own runs.
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                args.pool,
                "--type",
                "cyxwiz-sandbox",
                "--work-queue",
                queue,
                "--name",
                f"cyxwiz-{queue}",
                *(["--limit", str(args.limit)] if args.limit else []),
            ],
            env=env,
        )

        def _forward(signum: int, _frame: object) -> None:
            stop.set()
            worker.send_signal(signum)

        signal.signal(signal.SIGTERM, _forward)
        signal.signal(signal.SIGINT, _forward)
        code = worker.wait()
        stop.set()
        return code


if __name__ == "__main__":
    raise SystemExit(main())
