"""Load and abuse on the real coordinator (issue 21): simulated node agents heartbeat over mTLS while one
abusive client attacks the same listener.

The coordinator runs as its production entry point (``python -m infra.serve coordinator``) in its own
process, so its CPU time and peak memory are its own. Each simulated node has its own certificate (role
worker, issued by the dev CA) and its own source address (127.0.x.y: per-IP limits are per host), keeps one
mTLS connection, registers, then heartbeats every ``INTERVAL`` s. Phase "quiet": the nodes alone. Phase
"abuse": the same, while one client on 127.0.250.1 holds idle TLS connections without a certificate,
trickles request heads (slow-loris), floods unauthenticated requests and sends oversized bodies.

During the quiet phase ``JOBS`` jobs are dispatched to the nodes by the lifecycle's own scheduler
(``tasks.coordinator_channel.SchedulerChannel.assign`` on the coordinator's database, as the lifecycle does
in the trusted zone), then the chosen node fetches its job token over mTLS (``GET /v1/jobs/{id}/token``, the
node's first step on a dispatched job, which moves it to ``running``): they stay in flight through the abuse
phase. Dispatch latency is assignment request -> the node holding its job token; the hop that tells a node in
production (its Prefect work queue through the gateway) is not in it.

Reported: heartbeat p50/p99 in each phase and their ratio, dispatch p50/p99, legitimate failures (goal 0),
what the abuser's attempts got, the coordinator's CPU seconds and peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

PROJECT = Path(__file__).resolve().parents[1]
NODES = int(os.environ.get("CYXWIZ_BENCH_NODES", "200"))
INTERVAL = 2.0
PHASE_S = 20.0
ABUSER = "127.0.250.1"
JOBS = int(os.environ.get("CYXWIZ_BENCH_JOBS", "50"))


def _node_address(i: int) -> str:
    return f"127.0.{1 + i // 200}.{1 + i % 200}"


def _issue_nodes(pki: Any, root: Path, count: int) -> list[tuple[Path, Path]]:
    from cyxwiz.pki.certs import Role, write_certificate
    from cyxwiz.pki.keys import write_private_key

    ca = pki.issuing_ca()
    out = []
    for i in range(count):
        issued = ca.issue(common_name=f"sim-{i:04d}", role=Role.WORKER, client=True)
        assert issued.private_key is not None
        cert, key = root / f"sim-{i:04d}-cert.pem", root / f"sim-{i:04d}-key.pem"
        write_private_key(key, issued.private_key, overwrite=True)
        write_certificate(cert, issued.certificate, overwrite=True)
        out.append((cert, key))
    return out


def _start_coordinator(home: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.pki.keys import generate_ed25519, write_private_key
    from cyxwiz.storage.crypto import MasterKey
    from infra.serve import main as _serve_main  # noqa: F401 (the process below runs it)
    from tasks.config import ControlPlaneConfig

    pki = build_dev_pki(home / "pki")
    MasterKey.generate().write(home / "store.key")
    write_private_key(home / "audit.pem", generate_ed25519())
    ControlPlaneConfig(
        home=home, pki_root=pki.root, ledger_config=home / "ledger.json", store_root=home / "store",
        audit_dir=home / "audit", coordinator_db=f"sqlite:///{home / 'coordinator.db'}",
    ).to_file(home / "cp.json")  # fmt: skip
    proc, address = _serve(
        "coordinator",
        home,
        {
            "CYXWIZ_CONTROL_PLANE": str(home / "cp.json"),
            "CYXWIZ_TLS_CERT": str(pki.coordinator_cert),
            "CYXWIZ_TLS_KEY": str(pki.coordinator_key),
            "CYXWIZ_CA_BUNDLE": str(pki.bundle),
            "CYXWIZ_CRL": str(pki.crl),
            "CYXWIZ_STORE_MASTER_KEY_FILE": str(home / "store.key"),
            "CYXWIZ_AUDIT_SIGNING_KEY": str(home / "audit.pem"),
            "CYXWIZ_STATE_DIR": str(home / "coordinator"),
            "CYXWIZ_LISTEN_PORT": "0",
            "PREFECT_API_URL": "http://127.0.0.1:9/api",
        },
    )
    return proc, address, pki


def _serve(role: str, home: Path, settings: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m infra.serve ROLE`` as its production process; its first line names its address."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CYXWIZ_", "PREFECT_"))},
        "PYTHONPATH": str(PROJECT),
        **settings,
    }
    log_path = home / f"{role}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.serve", role], env=env, cwd=PROJECT, stdout=subprocess.PIPE,
        stderr=log_path.open("wb"), start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"{role} did not start: {line}{log_path.read_text()[-2000:]}")
    return proc, line.rsplit(" ", 1)[1].strip()


def _usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and peak RSS in KiB of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    return cpu, peak


class Node:
    def __init__(self, url: str, ctx: ssl.SSLContext, address: str, key: Path | None = None) -> None:
        # One mTLS connection per node, as the docstring says and an agent does: a job-token fetch while a
        # heartbeat is in flight waits for it instead of paying a second handshake.
        transport = httpx.AsyncHTTPTransport(
            verify=ctx, local_address=address, retries=0, limits=httpx.Limits(max_connections=1)
        )
        self.client = httpx.AsyncClient(base_url=url, transport=transport, timeout=30)
        self.key = key
        self.token = ""
        self.node_id = ""

    async def register(self, wallet: str | None = None) -> None:
        statement = None
        if wallet is not None:
            # A payout wallet is registered only with the node key's signed statement (issue 17; F1).
            from cyxwiz.ledger.payout import SignedWalletStatement
            from cyxwiz.pki.keys import load_private_key

            assert self.key is not None, "a wallet needs the node's key to sign its statement"
            statement = SignedWalletStatement.sign(key=load_private_key(self.key), wallet=wallet).to_dict()
        response = await self.client.post(
            "/v1/nodes/register",
            json={
                "wallet": wallet,
                **({"wallet_statement": statement} if statement else {}),
                "hardware": {
                    "gpus": 0,
                    "gpu_model": None,
                    "gpu_memory_mb": 0,
                    "cpu_cores": 1,
                    "memory_mb": 1024,
                },
            },
        )
        response.raise_for_status()
        self.token = response.json()["session_token"]
        self.node_id = response.json()["node_id"]

    async def job_token(self, job_id: str) -> None:
        response = await self.client.get(
            f"/v1/jobs/{job_id}/token", headers={"authorization": f"Bearer {self.token}"}
        )
        response.raise_for_status()

    async def beat(self, samples: list[tuple[str, float]], failures: Counter[str], phase: list[str]) -> None:
        started = time.perf_counter()
        try:
            response = await self.client.post(
                "/v1/nodes/heartbeat", json={}, headers={"authorization": f"Bearer {self.token}"}
            )
            if response.status_code != 200:
                failures[f"{phase[0]}:{response.status_code}"] += 1
                return
        except httpx.HTTPError as exc:
            failures[f"{phase[0]}:{type(exc).__name__}"] += 1
            return
        samples.append((phase[0], time.perf_counter() - started))


async def _nodes_loop(
    nodes: list[Node],
    samples: list[tuple[str, float]],
    failures: Counter[str],
    phase: list[str],
    stop: asyncio.Event,
) -> None:
    async def one(i: int, node: Node) -> None:
        await asyncio.sleep(INTERVAL * i / len(nodes))  # spread the beats over the interval
        while not stop.is_set():
            await node.beat(samples, failures, phase)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL)

    await asyncio.gather(*(one(i, n) for i, n in enumerate(nodes)))


async def _abuse(url: str, bundle: Path, stop: asyncio.Event, got: Counter[str]) -> None:
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(bundle))
    held: list[asyncio.StreamWriter] = []

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname="localhost", local_addr=(ABUSER, 0)
                ),
                10,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            got[f"connect refused ({type(exc).__name__})"] += 1
            return None

    async def idle() -> None:  # TLS without a certificate, then nothing
        while not stop.is_set():
            pair = await connect()
            if pair is None:
                await asyncio.sleep(0.5)
                continue
            held.append(pair[1])
            data = await pair[0].read(1)
            got["idle connection closed by server" if data == b"" else "idle got data"] += 1

    async def slowloris() -> None:
        while not stop.is_set():
            pair = await connect()
            if pair is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = pair
            writer.write(b"POST /v1/nodes/register HTTP/1.1\r\nHost: x\r\n")
            try:
                while not stop.is_set():
                    writer.write(b"X")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                            break
                got["slow-loris cut off"] += 1
            except (OSError, ssl.SSLError):
                got["slow-loris cut off"] += 1
            writer.close()

    async def flood() -> None:
        transport = httpx.AsyncHTTPTransport(verify=ctx, local_address=ABUSER, retries=0)
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=10) as client:
            while not stop.is_set():
                try:
                    big = b"x" * (1 << 20) if got["flood"] % 50 == 0 else b"{}"
                    r = await client.post(
                        "/v1/nodes/heartbeat", content=big, headers={"content-type": "application/json"}
                    )
                    got[f"flood -> {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    got[f"flood -> {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                got["flood"] += 1

    tasks = [*(idle() for _ in range(80)), *(slowloris() for _ in range(10)), *(flood() for _ in range(4))]
    waiter = asyncio.ensure_future(stop.wait())
    running = [asyncio.ensure_future(t) for t in tasks]
    await waiter
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for writer in held:
        writer.close()


def abuse_main(argv: list[str]) -> None:
    """``URL BUNDLE SECONDS``: attack for that long, then print what the attempts got (JSON, one line)."""
    import json

    url, bundle, seconds = argv[0], Path(argv[1]), float(argv[2])

    async def main() -> Counter[str]:
        stop, got = asyncio.Event(), Counter[str]()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await _abuse(url, bundle, stop, got)
        return got

    print(json.dumps(dict(asyncio.run(main()))), flush=True)


@contextlib.asynccontextmanager
async def abusing(
    url: str, bundle: Path, seconds: float
) -> AsyncIterator[Callable[[], Awaitable[Counter[str]]]]:
    """The abuser in its own process for ``seconds`` (in the nodes' event loop it would starve them, and
    their latency would measure this process, not the coordinator); yields the call that waits for what
    its attempts got. A plain child, not multiprocessing: nothing of it outlives the run."""
    code = "import sys; from bench.bench_load import abuse_main; abuse_main(sys.argv[1:])"
    attacker = subprocess.Popen(
        [sys.executable, "-c", code, url, str(bundle), str(seconds)],
        env={**os.environ, "PYTHONPATH": str(PROJECT)}, cwd=PROJECT, stdout=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip

    async def result() -> Counter[str]:
        loop = asyncio.get_running_loop()
        out, _ = await loop.run_in_executor(None, lambda: attacker.communicate(timeout=seconds + 120))
        return Counter(json.loads(out.decode().strip().splitlines()[-1]))

    try:
        yield result
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()


async def _dispatch(
    db: str, crl: Path, nodes: list[Node], spread_s: float
) -> tuple[list[float], Counter[str]]:
    """``JOBS`` jobs dispatched by the lifecycle's scheduler, one every ``spread_s / JOBS`` s; per job the
    seconds from the assignment request to the chosen node holding its job token."""
    from cyxwiz.coordinator.store import CoordinatorStore
    from tasks.coordinator_channel import SchedulerChannel

    channel = SchedulerChannel(store=CoordinatorStore.from_url(db), crl=crl)
    by_id = {n.node_id: n for n in nodes}
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures: Counter[str] = Counter()

    async def one(i: int) -> None:
        await asyncio.sleep(spread_s * i / JOBS)
        job_id = await loop.run_in_executor(
            None, lambda: channel.create_job(user="bench-user", spec={"bench": i}, duration_s=3600)
        )
        started = time.perf_counter()
        try:
            chosen = await loop.run_in_executor(None, lambda: channel.assign(job_id))
            await by_id[chosen["node_id"]].job_token(job_id)
        except Exception as exc:  # a failed dispatch is a figure, not a crash
            failures[f"dispatch:{type(exc).__name__}"] += 1
            return
        latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(i) for i in range(JOBS)))
    channel.store.engine.dispose()
    return latencies, failures


async def _drive(url: str, pki: Any, certs: list[tuple[Path, Path]], db: str) -> dict[str, Any]:
    from solders.keypair import Keypair

    from cyxwiz.transport.tls import client_context

    nodes = []
    for i, (cert, key) in enumerate(certs):
        ctx = client_context(trust_bundle=pki.bundle, cert=cert, key=key)
        nodes.append(Node(url, ctx, _node_address(i), key))
    for batch in range(0, len(nodes), 20):
        await asyncio.gather(*(n.register(str(Keypair().pubkey())) for n in nodes[batch : batch + 20]))
    samples: list[tuple[str, float]] = []
    failures: Counter[str] = Counter()
    abuser: Counter[str] = Counter()
    phase = ["quiet"]
    stop, abuse_stop = asyncio.Event(), asyncio.Event()
    loop_task = asyncio.ensure_future(_nodes_loop(nodes, samples, failures, phase, stop))
    quiet_until = time.monotonic() + PHASE_S
    # Every node has beaten once (fresh heartbeat: eligible) before the first dispatch.
    await asyncio.sleep(INTERVAL + 1)
    dispatched, dispatch_failures = await _dispatch(db, pki.crl, nodes, PHASE_S - INTERVAL - 4)
    failures.update(dispatch_failures)
    await asyncio.sleep(max(0.0, quiet_until - time.monotonic()))
    phase[0] = "abuse"
    async with abusing(url, pki.bundle, PHASE_S) as abuser_result:
        await asyncio.sleep(PHASE_S)
        stop.set()
        await asyncio.gather(loop_task, return_exceptions=True)
        abuser.update(await abuser_result())
    del abuse_stop
    for n in nodes:
        await n.client.aclose()
    return {"samples": samples, "failures": failures, "abuser": abuser, "dispatch": dispatched}


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def measure(home: Path) -> dict[str, Any]:
    """One load run with its coordinator's home under ``home`` (kept: its audit log is evidence): the raw
    samples, failures, the abuser's answers and dispatch latencies, plus the coordinator's CPU and peak RSS
    and the run's length. The coordinator is stopped (SIGTERM, as systemd does) before this returns."""
    proc, url, pki = _start_coordinator(home)
    try:
        (home / "sims").mkdir()
        certs = _issue_nodes(pki, home / "sims", NODES)
        idle_cpu = _usage(proc.pid)[0]
        started = time.monotonic()
        result = asyncio.run(_drive(url, pki, certs, f"sqlite:///{home / 'coordinator.db'}"))
        result["load_s"] = time.monotonic() - started
        cpu, result["peak_kib"] = _usage(proc.pid)
        result["cpu_s"] = cpu - idle_cpu
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result


def run() -> list[tuple[str, float, str]]:
    home = Path(tempfile.mkdtemp(prefix="cyxload-", dir="/tmp"))
    try:
        result = measure(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    load_s, cpu, peak = result["load_s"], result["cpu_s"], result["peak_kib"]
    by_phase = {p: [s for ph, s in result["samples"] if ph == p] for p in ("quiet", "abuse")}
    quiet, abuse = by_phase["quiet"], by_phase["abuse"]
    failures = sum(result["failures"].values())
    abuser = ", ".join(f"{k}: {v}" for k, v in sorted(result["abuser"].items()) if k != "flood")
    q50, q99, a50, a99 = _pct(quiet, 50), _pct(quiet, 99), _pct(abuse, 50), _pct(abuse, 99)
    dispatch: list[float] = result["dispatch"]
    d50, d99 = (_pct(dispatch, 50), _pct(dispatch, 99)) if dispatch else (float("inf"), float("inf"))
    return [
        ("heartbeat p99 under abuse / quiet", a99 / q99,
         f"{NODES} nodes, beat every {INTERVAL:.0f} s: quiet p50 {q50 * 1000:.0f} ms p99 {q99 * 1000:.0f} ms "
         f"({len(quiet)} beats); abuse p50 {a50 * 1000:.0f} ms p99 {a99 * 1000:.0f} ms ({len(abuse)} beats)"),
        ("dispatch p99 (s)", d99,
         f"{len(dispatch)} of {JOBS} jobs assigned by the scheduler and their token fetched by the node, "
         f"in flight to the end: p50 {d50 * 1000:.0f} ms p99 {d99 * 1000:.0f} ms"),
        ("legitimate failures", float(failures), f"goal 0: {dict(result['failures']) or 'none'}"),
        ("coordinator CPU seconds", cpu,
         f"over the {load_s:.0f} s run (registration, load, dispatch; {cpu / load_s:.2f} core); "
         f"peak RSS {peak / 1024:.0f} MiB"),
        ("abuser attempts", float(result["abuser"]["flood"]), f"flood requests; {abuser}"),
    ]  # fmt: skip
