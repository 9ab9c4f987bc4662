"""The control-plane host of the multi-host harness, run inside its namespace by :mod:`infra.cluster`.

PostgreSQL, the Prefect server on it, the ledger service, the coordinator and the gateway (the embedded
stack's machinery, bound to the service address), the project deployed, and the control worker. Prefect
and PostgreSQL listen on every address on purpose: only the namespace's firewall keeps nodes from them,
and the harness's tests show it does. Writes ``ready.json`` (URLs, ports, public ledger facts) and serves
until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from infra.netns import SERVICE_ADDRESS

READY = "ready.json"


def server_certificates(pki_root: Path, nodes: tuple[str, ...], *, address: str) -> Any:
    """The dev PKI, with coordinator and gateway certificates that also name ``address`` (their SAN)."""
    from cyxwiz.pki.certs import Role, write_certificate
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.pki.keys import write_private_key

    pki = build_dev_pki(pki_root, nodes=nodes)
    ca = pki.issuing_ca()
    for name, role, cert, key in (
        ("coordinator", Role.COORDINATOR, pki.coordinator_cert, pki.coordinator_key),
        ("gateway", Role.GATEWAY, pki.gateway_cert, pki.gateway_key),
    ):
        issued = ca.issue(
            common_name=name, role=role, server=True, client=True, dns_names=("localhost",),
            ip_addresses=("127.0.0.1", "::1", address),
        )  # fmt: skip
        assert issued.private_key is not None
        write_private_key(key, issued.private_key, overwrite=True)
        write_certificate(cert, issued.certificate, overwrite=True)
    return pki


def user_certificate(pki: Any, name: str) -> tuple[Path, Path]:
    """A user certificate (role user) for ``name`` beside the demo user's, issued once."""
    from cyxwiz.pki.certs import Role, write_certificate
    from cyxwiz.pki.keys import write_private_key

    cert, key = pki.root / "users" / f"{name}-cert.pem", pki.root / "users" / f"{name}-key.pem"
    if not cert.exists():
        cert.parent.mkdir(parents=True, exist_ok=True)
        issued = pki.issuing_ca().issue(common_name=name, role=Role.USER, client=True)
        assert issued.private_key is not None
        write_private_key(key, issued.private_key, overwrite=True)
        write_certificate(cert, issued.certificate, overwrite=True)
    return cert, key


def serve(
    home: Path,
    *,
    nodes: tuple[str, ...],
    users: tuple[str, ...],
    stop: threading.Event,
    node_lost_s: int | None = None,
) -> None:
    from infra.postgres import local_postgres
    from infra.stack import embedded_stack

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = server_certificates(home / "pki", nodes, address=SERVICE_ADDRESS)
    user_files = {name: user_certificate(pki, name) for name in users}
    with (
        local_postgres(home / "postgres.log", listen="*") as pg,
        embedded_stack(
            home,
            say=lambda m: print(m, flush=True),
            nodes=nodes,
            lifecycle_deployment=True,
            bind_host=SERVICE_ADDRESS,
            prefect_host="0.0.0.0",  # noqa: S104 (the firewall, not the bind, keeps nodes out: tested)
            prefect_database_url=pg.url("asyncpg"),
        ) as stack,
    ):
        if node_lost_s is not None:
            set_node_lost_s(stack.config_path, node_lost_s)
        stack.env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # dispatch follows a submission within a second
        # The lifecycle's logs reach PostgreSQL: they explain what happened to a job.
        stack.env["PREFECT_LOGGING_LEVEL"] = "INFO"
        stack.start_control_worker()
        ledger = stack.ledger
        # Each user signs their own escrow locks with their own funded wallet; each node is paid to its own.
        for name in ("demo-user", *users):
            stack.wallet(name)
        node_wallets = {name: stack.node_wallet(name) for name in nodes}
        wallets = {f"user:{n}": w.address for n, w in stack.users.items()}
        wallets |= {f"node:{n}": w for n, w in node_wallets.items()}
        ready = {
            "pid": os.getpid(),
            "service_address": SERVICE_ADDRESS,
            "coordinator_url": stack.coordinator.url,
            "gateway_url": stack.env["CYXWIZ_GATEWAY_URL"],
            "prefect_api_url": stack.prefect.api_url,
            "postgres_port": pg.port,
            "postgres_url": pg.url("psycopg"),
            "ledger_rpc_url": ledger.config.rpc_url,
            "mint": ledger.config.mint,
            "wallets": wallets,
            "user_wallet_files": {n: str(home / "users" / n) for n in stack.users},
            "pki_root": str(pki.root),
            "users": {name: [str(c), str(k)] for name, (c, k) in user_files.items()},
            "coordinator_db": f"sqlite:///{home / 'coordinator' / 'coordinator.db'}",
        }
        tmp = home / f".{READY}.tmp"
        tmp.write_text(json.dumps(ready, indent=2), encoding="utf-8")
        tmp.replace(home / READY)
        print(f"control plane ready: {home / READY}", flush=True)
        stop.wait()


def set_node_lost_s(config_path: Path, seconds: int) -> None:
    """The heartbeat silence after which a lifecycle takes a node for lost (the config's ``node_lost_s``),
    before the control worker starts: a harness partitions a node for longer than this, not a minute."""
    from tasks import services
    from tasks.config import ControlPlaneConfig

    if seconds < 1:
        raise ValueError("node_lost_s must be at least 1 s")
    config = ControlPlaneConfig.from_file(config_path)
    dataclasses.replace(config, node_lost_s=seconds).to_file(config_path)
    services.reset()


def balances(ready: dict[str, Any]) -> dict[str, int]:
    """Every user's and node's token balance, ``user:<name>``/``node:<name>`` (inside the control plane)."""
    from solders.pubkey import Pubkey

    from cyxwiz.ledger.rpc import RpcChain
    from cyxwiz.ledger.txbuild import token_account_of

    mint = Pubkey.from_string(ready["mint"])
    chain = RpcChain(url=ready["ledger_rpc_url"])
    try:
        return {
            owner: chain.token_amount(token_account_of(Pubkey.from_string(address), mint)) or 0
            for owner, address in ready["wallets"].items()
        }
    finally:
        chain.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.controlplane", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--nodes", default="node-1", help="comma-separated node names")
    parser.add_argument("--users", default="", help="comma-separated extra user names")
    parser.add_argument("--balances", action="store_true", help="print the ledger balances as JSON and exit")
    parser.add_argument(
        "--node-lost-s", type=int, default=None, help="node_lost_s of the lifecycles (default: the config's)"
    )
    args = parser.parse_args(argv)
    if args.balances:
        print(json.dumps(balances(json.loads((args.home / READY).read_text()))))
        return 0
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    nodes = tuple(n for n in args.nodes.split(",") if n)
    users = tuple(u for u in args.users.split(",") if u)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.home, nodes=nodes, users=users, stop=stop, node_lost_s=args.node_lost_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
