"""Revocation latency under load (issue 21, goal ≤ 5 s): a node revoked while ``bench load`` runs.

The production listeners as their own processes (``python -m infra.serve coordinator`` and ``gateway``, a
real local Prefect server upstream), loaded as in ``bench_load``: ``NODES`` simulated mTLS agents
heartbeating every 2 s, and after a quiet phase the abusive client (idle no-certificate TLS connections,
slow-loris, unauthenticated floods) in its own process. During the abuse phase ``ROUNDS`` victims (each a
node with its own certificate, in its own prober process) are revoked at the CA one after another: the CRL
file is rewritten and nothing is pushed. From that moment each prober measures when its node is cut off on
every channel it held:

* ``coordinator, kept-alive``: the heartbeat on the connection opened before the revocation,
* ``coordinator, new handshake``: a fresh mTLS connection,
* ``gateway, kept-alive``: a Prefect API call on the connection opened before,
* ``gateway, events/out``: the open websocket is closed,
* ``gateway, new handshake``.

Reported: per channel the median seconds ÷ the 5 s goal, and the worst channel of the worst round
("cut off everywhere"), beside the load's heartbeat p99 and legitimate failures during the rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.bench_load import (
    INTERVAL,
    Node,
    _issue_nodes,
    _node_address,
    _nodes_loop,
    _pct,
    _serve,
    _start_coordinator,
    _usage,
    abusing,
)

NODES = int(os.environ.get("CYXWIZ_BENCH_NODES", "200"))
ROUNDS = 3
QUIET_S = 10.0
GOAL_S = 5.0
#: Probe period: fine enough to resolve well under the goal, coarse enough not to load the listeners.
PROBE_S = 0.1
CHANNELS = (
    "coordinator, kept-alive",
    "coordinator, new handshake",
    "gateway, kept-alive",
    "gateway, events/out",
    "gateway, new handshake",
)


def _start_gateway(home: Path, pki: Any, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    return _serve(
        "gateway",
        home,
        {
            "CYXWIZ_CONTROL_PLANE": str(home / "cp.json"),
            "CYXWIZ_TLS_CERT": str(pki.gateway_cert),
            "CYXWIZ_TLS_KEY": str(pki.gateway_key),
            "CYXWIZ_CA_BUNDLE": str(pki.bundle),
            "CYXWIZ_CRL": str(pki.crl),
            "CYXWIZ_AUDIT_SIGNING_KEY": str(home / "audit.pem"),
            "CYXWIZ_STATE_DIR": str(home / "coordinator"),
            "CYXWIZ_KEYRING_DIR": str(home / "coordinator" / "keyring"),
            "CYXWIZ_PREFECT_UPSTREAM": upstream,
            "CYXWIZ_LISTEN_PORT": "0",
        },
    )


def _victim(files: dict[str, str], address: str, ready: Any, go: Any, out: Any) -> None:
    """One revoked node (own process): open every channel, then time when each one refuses it."""
    import httpx
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    from cyxwiz.transport.tls import client_context

    def context() -> Any:
        return client_context(
            trust_bundle=Path(files["bundle"]), cert=Path(files["cert"]), key=Path(files["key"])
        )

    def client(url: str, headers: dict[str, str] | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(verify=context(), local_address=address, retries=0)
        return httpx.Client(base_url=url, transport=transport, headers=headers or {}, timeout=5)

    coordinator = client(files["coordinator"])
    node = coordinator.post("/v1/nodes/register", json={"hardware": {}}).json()
    headers = {"authorization": f"Bearer {node['session_token']}"}
    coordinator.post("/v1/nodes/heartbeat", json={}, headers=headers).raise_for_status()
    gateway = client(files["gateway"], headers)
    gateway.get("/api/work_pools/gpu").raise_for_status()
    ws_url = files["gateway"].replace("https", "wss") + "/api/events/out"
    ws = ws_connect(
        ws_url, ssl=context(), additional_headers=headers, subprotocols=["prefect"],  # type: ignore[list-item]
        source_address=(address, 0),
    )  # fmt: skip
    ws.send(json.dumps({"type": "auth", "token": None}))
    json.loads(ws.recv(timeout=10))
    cut: dict[str, float] = {}

    def refused(call: Any) -> bool:
        try:
            return bool(call().status_code in (401, 403))
        except httpx.TransportError:
            return True

    def fresh(url: str) -> Any:
        def call() -> Any:
            with client(url, headers) as one:
                return one.get("/api/health" if url == files["gateway"] else "/v1/health")

        return call

    probes = {
        CHANNELS[0]: lambda: coordinator.post("/v1/nodes/heartbeat", json={}, headers=headers),
        CHANNELS[1]: fresh(files["coordinator"]),
        CHANNELS[2]: lambda: gateway.get("/api/work_pools/gpu"),
        CHANNELS[4]: fresh(files["gateway"]),
    }

    def poll(name: str, call: Any) -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            if refused(call):
                cut[name] = time.time()
                return
            time.sleep(PROBE_S)

    def websocket() -> None:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                ws.recv(timeout=60)
        cut[CHANNELS[3]] = time.time()

    ready.set()
    go.wait()
    threads = [threading.Thread(target=poll, args=item, daemon=True) for item in probes.items()]
    threads.append(threading.Thread(target=websocket, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=65)
    out.put(cut)


async def _load(url: str, pki: Any, certs: list[tuple[Path, Path]], during: Any) -> dict[str, Any]:
    """The heartbeat load; the abuser after ``QUIET_S``; ``during()`` (the revocation rounds) meanwhile."""
    from cyxwiz.transport.tls import client_context

    nodes = [
        Node(url, client_context(trust_bundle=pki.bundle, cert=c, key=k), _node_address(i))
        for i, (c, k) in enumerate(certs)
    ]
    for batch in range(0, len(nodes), 20):
        await asyncio.gather(*(n.register() for n in nodes[batch : batch + 20]))
    samples: list[tuple[str, float]] = []
    failures: Counter[str] = Counter()
    phase, stop = ["quiet"], asyncio.Event()
    loop_task = asyncio.ensure_future(_nodes_loop(nodes, samples, failures, phase, stop))
    await asyncio.sleep(QUIET_S)
    phase[0] = "revoking"
    async with abusing(url, pki.bundle, float(ROUNDS * 8 + 20)) as abuser_result:
        rounds = await asyncio.get_running_loop().run_in_executor(None, during)
        stop.set()
        await asyncio.gather(loop_task, return_exceptions=True)
        abuser = dict(await abuser_result())
    for n in nodes:
        await n.client.aclose()
    return {"samples": samples, "failures": failures, "abuser": abuser, "rounds": rounds}


def run() -> list[tuple[str, float, str]]:
    from infra.local_server import local_prefect_server
    from infra.stack import prefect_cli

    home = Path(tempfile.mkdtemp(prefix="cyxrevload-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with local_prefect_server(home / "prefect") as server:
            prefect_cli("work-pool", "create", "gpu", "--type", "process", env={**os.environ, **server.env()})
            coordinator, url, pki = _start_coordinator(home)
            procs.append(coordinator)
            gateway, gateway_url = _start_gateway(home, pki, server.api_url.removesuffix("/api"))
            procs.append(gateway)
            (home / "sims").mkdir()
            certs = _issue_nodes(pki, home / "sims", NODES + ROUNDS)
            load, victims = certs[:NODES], certs[NODES:]
            spawn = multiprocessing.get_context("spawn")
            out: Any = spawn.Queue()
            probers = []
            for i, (cert, key) in enumerate(victims):
                files = {
                    "cert": str(cert), "key": str(key), "bundle": str(pki.bundle), "coordinator": url,
                    "gateway": gateway_url,
                }  # fmt: skip
                ready, go = spawn.Event(), spawn.Event()
                prober = spawn.Process(target=_victim, args=(files, f"127.0.240.{i + 1}", ready, go, out))
                prober.start()
                if not ready.wait(120):
                    raise RuntimeError("a victim did not open its channels")
                probers.append((cert, go, prober))

            def revoke_rounds() -> list[dict[str, float]]:
                found = []
                for cert, go, prober in probers:
                    time.sleep(6.0)
                    go.set()
                    revoked_at = time.time()
                    pki.revoke(cert)
                    cut = out.get(True, 90)
                    prober.join(timeout=10)
                    found.append({k: v - revoked_at for k, v in cut.items()})
                return found

            before = {"coordinator": _usage(coordinator.pid)[0], "gateway": _usage(gateway.pid)[0]}
            started = time.monotonic()
            result = asyncio.run(_load(url, pki, load, revoke_rounds))
            load_s = time.monotonic() - started
            usage = {"coordinator": _usage(coordinator.pid), "gateway": _usage(gateway.pid)}
            usage = {k: (cpu - before[k], peak) for k, (cpu, peak) in usage.items()}
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)
    rounds: list[dict[str, float]] = result["rounds"]
    rows = []
    for channel in CHANNELS:
        values = [r.get(channel, float("inf")) for r in rounds]
        median = statistics.median(values)
        rows.append(
            (
                f"revoked -> cut: {channel}",
                median / GOAL_S,
                f"median {median:.2f} s, max {max(values):.2f} s over {len(values)} rounds (goal ≤ 5 s)",
            )
        )
    everywhere = max(max(r.get(c, float("inf")) for c in CHANNELS) for r in rounds)
    beats = [s for ph, s in result["samples"] if ph == "revoking"]
    failures = {k: v for k, v in result["failures"].items() if k.startswith("revoking")}
    rows.append(
        (
            "revoked -> cut off everywhere (worst)",
            everywhere / GOAL_S,
            f"{everywhere:.2f} s; meanwhile {NODES} agents beat every {INTERVAL:.0f} s (p99 "
            f"{_pct(beats, 99) * 1000:.0f} ms, {len(beats)} beats, failures {failures or 'none'}) and the "
            f"abuser ran ({sum(v for k, v in result['abuser'].items() if k != 'flood')} attempts answered)",
        )
    )
    for service, (cpu, peak) in usage.items():
        rows.append(
            (
                f"{service} CPU seconds",
                cpu,
                f"during the {load_s:.0f} s of load ({cpu / load_s:.2f} core); "
                f"peak RSS {peak / 1024:.0f} MiB",
            )
        )
    return rows
