"""The chaos harness: the embedded control plane with every part in its own killable, restartable process.

One stack serves many table cells (issue 21): the Prefect server, the ledger service, the verifier
service, the coordinator and the gateway (``python -m infra.serve``, as the systemd units run them), the
control worker (which runs every ``job-lifecycle`` flow run as its child) and the node agents. A cell
submits one job, watches it reach a lifecycle step, ``kill -9``s one process (with its children) there,
restarts it and then runs the escrow sweep every ``SWEEP_INTERVAL_S`` until the job is terminal; the cell
records the outcome and checks supply, paid-once and the audit chain (:mod:`infra.chaos_cells`).

A network partition is not here: it is iptables inside a node's own namespace, on the multi-host
harness (:meth:`infra.netns.Topology.partition`, tests/e2e/test_multihost.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from infra.local_server import free_port, prefect_env, stop_process_group
from infra.stack import PROJECT, EmbeddedStack, embedded_stack

#: Node heartbeat period (s) and the silence after which the lifecycle takes a node for lost.
HEARTBEAT_S = 2
NODE_LOST_S = 10
#: Prefect flow-run heartbeats (its minimum) and the silence after which a RUNNING run is dead.
FLOW_HEARTBEAT_S = 30
RUN_SILENT_S = 75


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def kill_tree(pid: int) -> list[int]:
    """``kill -9`` ``pid`` and every descendant (a flow run under its worker, a sandbox under its agent)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    for target in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
    return found


@dataclass(kw_only=True)
class Service:
    """One killable part: how to find its process and how to start it again."""

    name: str
    pid: Callable[[], int | None]
    start: Callable[[], None]
    reap: Callable[[], None] = lambda: None

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            kill_tree(pid)
        self.reap()

    def restart(self) -> None:
        self.start()

    def alive(self) -> bool:
        """Its process exists and is no zombie (a part that died on its own is reaped by nobody yet)."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass(kw_only=True)
class Proc:
    """A subprocess the harness starts (again) from the same argument list and environment."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool] = lambda: True
    popen: subprocess.Popen[bytes] | None = None
    timeout: float = 180.0

    def start(self) -> None:
        timeout = self.timeout
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv, env=self.env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.argv[2:4]} did not start:\n{tail}")
            time.sleep(0.2)

    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None:
            stop_process_group(self.popen)


def _answers(url: str, path: str = "") -> Callable[[], bool]:
    import httpx

    def probe() -> bool:
        try:
            httpx.get(url + path, timeout=2, verify=False)  # noqa: S501 (liveness only, no data)
        except httpx.HTTPError:
            return False
        return True

    return probe


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@dataclass(kw_only=True)
class ChaosStack:
    stack: EmbeddedStack
    services: dict[str, Service] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def agent_service(self, name: str) -> Service:
        def pid() -> int | None:
            proc = self.stack.agents.get(name)
            return proc.pid if proc is not None and proc.poll() is None else None

        def start() -> None:
            self.start_agent(name)

        def reap() -> None:
            proc = self.stack.agents.pop(name, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)

        return Service(name=f"agent:{name}", pid=pid, start=start, reap=reap)

    def start_agent(self, name: str) -> None:
        extra = {
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(FLOW_HEARTBEAT_S),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        self.stack.start_agent(name, extra_env=extra)
        self.stack.wait_for_node(name)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


def _address(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def _listener(stack: EmbeddedStack, service: str, port: int, extra: dict[str, str]) -> Proc:
    """``python -m infra.serve SERVICE`` on loopback ``port`` with the stack's PKI, config and audit."""
    pki = stack.pki
    cert, key = (
        (pki.coordinator_cert, pki.coordinator_key)
        if service == "coordinator"
        else (pki.gateway_cert, pki.gateway_key)
    )
    from infra.serve import MONEY_SECRETS

    # A listener faces nodes and users: it gets no ledger passphrase, as in production (issue 17).
    unsealing = {*MONEY_SECRETS, *(f"{name}_FILE" for name in MONEY_SECRETS)}
    env = {
        **{k: v for k, v in stack.env.items() if k not in unsealing},
        "CYXWIZ_LISTEN_HOST": "127.0.0.1",
        "CYXWIZ_LISTEN_PORT": str(port),
        "CYXWIZ_TLS_CERT": str(cert),
        "CYXWIZ_TLS_KEY": str(key),
        "CYXWIZ_CA_BUNDLE": str(pki.bundle),
        "CYXWIZ_CRL": str(pki.crl),
        "CYXWIZ_STATE_DIR": str(stack.home / "coordinator"),
        "CYXWIZ_ISSUER_SOCKET": str(stack.issuer.socket_path),
        **extra,
    }
    return Proc(
        argv=[sys.executable, "-m", "infra.serve", service], env=env, log=stack.home / f"{service}.log",
        ready=lambda: _listening(port),
    )  # fmt: skip


def _prefect_service(stack: EmbeddedStack, chaos: ChaosStack) -> Service:
    """The Prefect server: the stack's first one, then ours on the same port and database."""
    server = stack.prefect
    port = _address(server.api_url)[1]
    proc = Proc(
        argv=[sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **prefect_env(server.home, server.api_url)},
        log=server.home / "server.log",
        ready=_answers(server.api_url, "/health"),
    )
    proc.timeout = 420.0
    chaos.procs.append(proc)

    def pid() -> int | None:
        return proc.pid() if proc.popen is not None else server.pid

    return Service(name="prefect", pid=pid, start=proc.start, reap=proc.reap)


@contextlib.contextmanager
def chaos_stack(home: Path, *, nodes: tuple[str, ...] = ("node-1", "node-2")) -> Iterator[ChaosStack]:
    """The embedded stack with coordinator and gateway moved into their own processes, short loss and
    silence limits for the lifecycle, the control worker and ``nodes`` running."""
    from tasks import services
    from tasks.config import ControlPlaneConfig

    os.environ["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(FLOW_HEARTBEAT_S)
    with embedded_stack(
        home,
        say=lambda _m: None,
        nodes=nodes,
        lifecycle_deployment=True,
        gateway=False,
        prefect_timeout=420,  # a loaded CI host starts Prefect slowly; the table waits rather than fails
    ) as stack:
        chaos = ChaosStack(stack=stack)
        try:
            config = ControlPlaneConfig.from_file(stack.config_path)
            dataclasses.replace(config, node_lost_s=NODE_LOST_S, run_silent_s=RUN_SILENT_S).to_file(
                stack.config_path
            )
            services.reset()
            stack.env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(FLOW_HEARTBEAT_S)
            stack.env["PREFECT_WORKER_QUERY_SECONDS"] = "1"
            coordinator_port = _address(stack.coordinator.url)[1]
            stack.coordinator.stop()  # the same listener again, in its own process, on the same port
            coordinator = _listener(
                stack, "coordinator", coordinator_port, {"PREFECT_API_URL": stack.prefect.api_url}
            )
            gateway_port = free_port()
            gateway = _listener(
                stack, "gateway", gateway_port,
                {"CYXWIZ_KEYRING_DIR": str(stack.home / "coordinator" / "keyring"),
                 "CYXWIZ_PREFECT_UPSTREAM": stack.prefect.api_url.removesuffix("/api")},
            )  # fmt: skip
            for proc in (coordinator, gateway):
                proc.start()
                chaos.procs.append(proc)
            stack.env["CYXWIZ_GATEWAY_URL"] = f"https://127.0.0.1:{gateway_port}"
            for name, proc in (("coordinator", coordinator), ("gateway", gateway)):
                chaos.services[name] = Service(name=name, pid=proc.pid, start=proc.start, reap=proc.reap)
            chaos.services["prefect"] = _prefect_service(stack, chaos)
            ledger = stack.ledger_service
            chaos.services["ledger"] = Service(
                name="ledger", pid=lambda: ledger._process.pid if ledger._process else None,
                start=ledger.start, reap=ledger.kill,
            )  # fmt: skip
            verifier = stack.verifier
            chaos.services["verifier"] = Service(
                name="verifier", pid=lambda: verifier.pid, start=verifier.start, reap=verifier.stop
            )
            stack.start_control_worker()
            chaos.services["control"] = Service(
                name="control", pid=lambda: _alive(stack.agents.get("__control__")),
                start=lambda: _started(stack.start_control_worker()),
                reap=lambda: _wait(stack.agents.get("__control__")),
            )  # fmt: skip
            for name in nodes:
                chaos.start_agent(name)
                chaos.services[f"agent:{name}"] = chaos.agent_service(name)
            yield chaos
        finally:
            chaos.close()


def _started(_proc: subprocess.Popen[bytes]) -> None:
    return None


def _alive(proc: subprocess.Popen[bytes] | None) -> int | None:
    return proc.pid if proc is not None and proc.poll() is None else None


def _wait(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
