"""The multi-host harness: the control plane and each node agent and user on their own network namespace.

``python -m infra.cluster up --nodes 3 --users 2`` builds it and serves until Ctrl-C; ``down`` removes any
topology left behind (its processes stopped first); ``list`` shows them; ``partition HOST`` cuts a host off
from the control plane (iptables inside its namespace) and ``heal HOST`` undoes it. Tests use
:meth:`Cluster.running`.

The control plane (:mod:`infra.controlplane`) runs Prefect on PostgreSQL, the ledger service, coordinator,
gateway and control worker in its namespace; node agents (``python -m agents``) each run in theirs with
only the node's own certificate and the two public URLs; users run ``cyxwiz job ...`` from theirs.
Everything is started from argument lists (no shell) and stopped on the way out, failures included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from infra.netns import Host, Topology, list_namespaces, topology

PROJECT = Path(__file__).resolve().parents[1]
_CARRIED = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TERM")
#: Seconds between two heartbeats of a node agent.
HEARTBEAT_S = 2


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing of the caller's Prefect or cyxwiz settings leaks into a host."""
    env = {k: os.environ[k] for k in _CARRIED if k in os.environ}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # INFO reaches the API too: a lifecycle's and a node run's logs (in PostgreSQL) explain a job.
        PREFECT_LOGGING_LEVEL="INFO",
        CYXWIZ_PROJECT_DIR=str(PROJECT),
    )
    env.update(extra)
    return env


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


@dataclass(kw_only=True)
class Cluster:
    home: Path
    net: Topology
    ready: dict[str, Any]
    supervisor: subprocess.Popen[bytes]
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        home: Path,
        *,
        nodes: Sequence[str] = ("node-1",),
        users: Sequence[str] = ("demo-user",),
        timeout: float = 420.0,
        node_lost_s: int | None = None,
    ) -> Iterator[Cluster]:
        """Build the namespaces, start the control plane in its own, open the public ports, yield.
        ``node_lost_s``: the heartbeat silence after which a lifecycle re-dispatches (config: 60 s)."""
        hosts = [(n, "node") for n in nodes] + [(u, "user") for u in users]
        with topology(hosts=hosts) as net:
            log = (home / "control-plane.log").open("ab")
            extra_users = ",".join(u for u in users if u != "demo-user")
            argv = [sys.executable, "-m", "infra.controlplane", "--home", str(home)]
            if node_lost_s is not None:
                argv += ["--node-lost-s", str(int(node_lost_s))]
            supervisor = net.popen(
                net.control,
                [*argv, "--nodes", ",".join(nodes), "--users", extra_users],
                env=base_env(),
                cwd=PROJECT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            cluster = cls(home=home, net=net, ready={}, supervisor=supervisor)
            try:
                cluster.ready = cluster._wait_ready(timeout)
                net.restrict(
                    (port_of(cluster.ready["coordinator_url"]), port_of(cluster.ready["gateway_url"]))
                )
                yield cluster
            finally:
                cluster.close()
                log.close()

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        path = self.home / "ready.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                ready: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
                return ready
            if self.supervisor.poll() is not None:
                break
            time.sleep(0.5)
        tail = (self.home / "control-plane.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"control plane not ready (exit {self.supervisor.poll()}):\n{tail}")

    def host(self, name: str) -> Host:
        return self.net.host(name)

    def agent_env(self, name: str) -> dict[str, str]:
        """What node ``name``'s agent knows: its own certificate and work dir, the two public URLs."""
        pki = Path(self.ready["pki_root"])
        work = self.home / "agents" / name
        return base_env(
            PREFECT_HOME=str(work / "prefect"),
            CYXWIZ_NODE_NAME=name,
            CYXWIZ_NODE_CERT=str(pki / "nodes" / f"{name}-cert.pem"),
            CYXWIZ_NODE_KEY=str(pki / "nodes" / f"{name}-key.pem"),
            CYXWIZ_CA_BUNDLE=str(pki / "bundle.pem"),
            CYXWIZ_CRL=str(pki / "ca" / "ca-crl.pem"),
            CYXWIZ_COORDINATOR_URL=self.ready["coordinator_url"],
            CYXWIZ_GATEWAY_URL=self.ready["gateway_url"],
            CYXWIZ_WORK_ROOT=str(work),
            CYXWIZ_SANDBOX_MAX_MEMORY_MB="2048",
            PREFECT_WORKER_QUERY_SECONDS="2",
            CYXWIZ_NODE_WALLET=self.ready["wallets"][f"node:{name}"],
        )

    def start_agent(self, name: str) -> subprocess.Popen[bytes]:
        """A node agent in the node's namespace, knowing only its own certificate and the two URLs."""
        work = self.home / "agents" / name
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = (work / "agent.log").open("ab")
        proc = self.net.popen(
            self.host(name),
            [sys.executable, "-m", "agents", "--heartbeat", str(HEARTBEAT_S)],
            env=self.agent_env(name),
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.agents[name] = proc
        return proc

    def user_env(self, user: str) -> dict[str, str]:
        pki = Path(self.ready["pki_root"])
        if user == "demo-user":
            cert, key = pki / "certs" / "user-cert.pem", pki / "certs" / "user-key.pem"
        else:
            cert, key = (Path(p) for p in self.ready["users"][user])
        wallet = Path(self.ready["user_wallet_files"][user])
        return base_env(
            CYXWIZ_COORDINATOR_URL=self.ready["coordinator_url"],
            CYXWIZ_USER_CERT=str(cert),
            CYXWIZ_USER_KEY=str(key),
            CYXWIZ_CA_BUNDLE=str(pki / "bundle.pem"),
            # The user's own wallet signs each escrow lock on the user's host (F1).
            CYXWIZ_WALLET=str(wallet / "wallet.key"),
            CYXWIZ_WALLET_PASSPHRASE_FILE=str(wallet / "wallet.pass"),
        )

    def run(
        self, host: Host, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` and wait (output captured)."""
        return subprocess.run(
            host.argv(argv),
            env=env or base_env(),
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def job_cli(self, user: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``cyxwiz job ARGS`` as ``user``, from the user's own host."""
        argv = [sys.executable, "-m", "cyxwiz.cli", "job", *args]
        return self.run(self.host(user), argv, env=self.user_env(user), timeout=timeout)

    def balances(self) -> dict[str, int]:
        """Ledger balances, asked from inside the control plane (the ledger listens on its loopback)."""
        argv = [sys.executable, "-m", "infra.controlplane", "--home", str(self.home), "--balances"]
        proc = self.run(self.net.control, argv, env=base_env(), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        result: dict[str, int] = json.loads(proc.stdout)
        return result

    def stop_agent(self, name: str, *, sig: int = signal.SIGTERM) -> None:
        proc = self.agents.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        if self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.supervisor.pid, signal.SIGKILL)
                self.supervisor.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the topology and serve until Ctrl-C")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--users", type=int, default=1)
    up.add_argument("--home", type=Path, default=None)
    up.add_argument("--node-lost-s", type=int, default=None, help="heartbeat silence before a re-dispatch")
    sub.add_parser("list", help="namespaces of this harness on this machine")
    down = sub.add_parser("down", help="stop and remove topologies left behind")
    down.add_argument("--tag", default=None, help="only this topology's (default: all)")
    for verb, what in (("partition", "cut a host off from the control plane"), ("heal", "undo partition")):
        cut = sub.add_parser(verb, help=what)
        cut.add_argument("host", help="the host's name, e.g. node-2")
        cut.add_argument("--tag", default=None, help="the topology (default: the only one)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("infra.cluster: network namespaces need root", file=sys.stderr)
        return 2
    if args.command == "list":
        print("\n".join(list_namespaces()))
        return 0
    if args.command == "down":
        tags = {n[3:].split("-")[0] for n in list_namespaces(args.tag)}
        for tag in sorted(tags):
            Topology.existing(tag).destroy()
        print(f"removed {len(tags)} topologies")
        return 0
    if args.command in ("partition", "heal"):
        return _partition(args.host, tag=args.tag, heal=args.command == "heal")
    home = args.home or Path(tempfile.mkdtemp(prefix="cyxmh-", dir="/tmp"))
    nodes = [f"node-{i}" for i in range(1, args.nodes + 1)]
    users = ["demo-user", *(f"user-{i}" for i in range(2, args.users + 1))]
    running = Cluster.running(home, nodes=nodes, users=users, node_lost_s=args.node_lost_s)
    with running as cluster, contextlib.suppress(KeyboardInterrupt):
        for name in nodes:
            cluster.start_agent(name)
        print(
            json.dumps({"home": str(home), "namespaces": cluster.net.namespaces(), **cluster.ready}, indent=2)
        )
        print("enter a host: nsenter --net=/run/netns/<namespace> bash; Ctrl-C stops everything", flush=True)
        signal.pause()
    return 0


def _partition(host: str, *, tag: str | None, heal: bool) -> int:
    """``partition``/``heal`` HOST of the running topology (the only one, or ``tag``'s)."""
    tags = sorted({n[3:].split("-")[0] for n in list_namespaces(tag)})
    if len(tags) != 1:
        print(
            f"infra.cluster: {len(tags)} topologies here ({', '.join(tags)}): name one with --tag",
            file=sys.stderr,
        )
        return 2
    net = Topology.existing(tags[0])
    if host not in net.hosts:
        print(f"infra.cluster: no host {host!r} in topology {tags[0]}", file=sys.stderr)
        return 2
    if heal:
        net.heal(host)
    else:
        net.partition(host)
    print(f"{host} {'healed' if heal else 'partitioned from the control plane'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
