"""Escrow pairs as the control plane runs them: over the ledger service, with the verifier's own process.

``bench_ledger.py`` measures the bookkeeping against an in-process LiteSVM with every key in one process
(the bookkeeping's raw CPU cost). Here the parts are where the embedded stack and production put them:
LiteSVM is the local ledger service (its own process, JSON-RPC on loopback, as a cluster is reached), the
verifier co-signs from its own process over its Unix socket, and the control plane's ledger holds only the
payer and coordinator keys (:func:`cyxwiz.ledger.config.open_ledger`). Each job's passing attestation is
asked of that verifier service before the clock starts, as the lifecycle asks it before the release (its
hook passes every job: :mod:`bench.ledger_verifier`), so the release finds the verdict signed and recorded
where the stack's does. ``IN_FLIGHT`` escrows run at once (threads of one process, or a process each as the
control worker runs lifecycles; and one at a time). The baseline sends the *same* transactions (same
instructions, same signers, keys loaded in this process) through the same RPC client to the same service,
with the same concurrency, and confirms each one (F2: signed, sent and confirmed): no intent log, no checks,
no co-signing round trip; its release memo carries the report hash as the ledger's does. The two sides
alternate in rounds so the host's load weighs on both alike.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import ReportAttestation
from cyxwiz.ledger.rpc import RpcChain

N = 240
IN_FLIGHT = 8
ROUNDS = 6
PASSPHRASE = "bench-ledger-stack-passphrase"
PEER = "12D3KooWBenchNode"
MINIMUM = 1_000_000  # provision_demo's minimum payment


REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class _Stack:
    demo: Any  # cyxwiz.ledger.embedded.DemoLedger
    pki: Any  # cyxwiz.pki.devpki.DevPKI
    verifier_socket: Path
    #: the audit log both processes append to, as the stack's control plane and verifier service do
    #: (None: ``--no-audit``, the moves alone)
    audit_dir: Path | None
    audit_key: Path
    #: job id -> the verifier service's passing attestation (JSON), asked for before the clock starts
    reports: dict[str, str] = field(default_factory=dict)


@contextmanager
def _stack(root: Path, *, audit: bool = True) -> Iterator[_Stack]:
    """The ledger service and the verifier service as subprocesses, a provisioned demo ledger."""
    from cyxwiz.ledger.embedded import provision_demo, start_local_ledger
    from cyxwiz.ledger.keystore import KdfParams
    from cyxwiz.ledger.verifier_service import start_verifier_service
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.pki.keys import generate_ed25519, write_private_key

    pki = build_dev_pki(root / "pki", nodes=("node-1",))
    audit_dir, audit_key = root / "audit", root / "audit-key.pem"
    write_private_key(audit_key, generate_ed25519())
    with start_local_ledger(root / "service") as service:
        demo = provision_demo(
            rpc_url=service.rpc_url, state_dir=root / "demo", passphrase=PASSPHRASE.encode(),
            user_funds=10**13, kdf=KdfParams.fast_for_tests(), pki=pki,
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.endswith("_PASSPHRASE")}
        if audit:
            env |= {"CYXWIZ_AUDIT_DIR": str(audit_dir), "CYXWIZ_AUDIT_SIGNING_KEY": str(audit_key)}
        env |= demo.verifier_env() | {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        }
        # the core verifier service with a hook that passes every job (bench/ledger_verifier.py)
        with start_verifier_service(
            config_path=demo.config_path, state_dir=root / "verifier", env=env, module="bench.ledger_verifier"
        ) as verifier:
            yield _Stack(
                demo=demo,
                pki=pki,
                verifier_socket=verifier.socket_path,
                audit_dir=audit_dir if audit else None,
                audit_key=audit_key,
            )


def _reports(stack: _Stack, jobs: list[str]) -> dict[str, str]:
    """Each job's passing attestation, asked of the verifier service before the clock starts, as the
    lifecycle asks it (``POST /v1/verify``) before the release: the service signs its verdict and records
    it on disk there, so the release's co-signing finds it as it does in the stack."""
    from cyxwiz.ledger.verifier_client import RemoteCosigner

    verifier = RemoteCosigner(socket_path=stack.verifier_socket)
    config, user, node = stack.demo.config, stack.demo.user.pubkey(), str(stack.demo.node.pubkey())
    return {
        job: str(
            verifier.verify({
                "job_id": job, "node_peer_id": PEER, "node_wallet": node,
                "escrow": str(txbuild.escrow_address(config.pubkey("payer"), job, user)),
            })["attestation"]
        )
        for job in jobs
    }  # fmt: skip


Pair = tuple[Callable[[int], None], Callable[[], None]]  # one pair by its index, and the side's close
Runner = tuple[Callable[[range], None], Callable[[], None]]  # pairs by a range of indices, and close


def _ledger_side(stack: _Stack, jobs: list[str]) -> Pair:
    """One escrow pair through the control plane's ledger (and its close)."""
    demo = stack.demo
    from cyxwiz.audit.log import AuditLog

    # every move audited, as in the stack
    audit = None if stack.audit_dir is None else AuditLog.open(stack.audit_dir, signing_key=stack.audit_key)
    ledger = demo.open_ledger(passphrase=PASSPHRASE.encode(), audit=audit)
    reports = stack.reports
    node = demo.node.pubkey()

    def pair(i: int) -> None:
        job = jobs[i]
        ledger.create(job_id=job, user=demo.user, amount=MINIMUM + i)
        ledger.assign(job_id=job, node_wallet=node, node_peer_id=PEER)
        ledger.release(job_id=job, node_wallet=node, report=reports[job])

    def close() -> None:
        ledger.chain.close()
        ledger.store.dispose()
        if audit is not None:
            audit.close()

    return pair, close


def _bare_side(stack: _Stack, jobs: list[str]) -> Pair:
    """The same two transactions sent and confirmed bare (and its close)."""
    demo, config = stack.demo, stack.demo.config
    payer = config.load_key("payer", passphrase=PASSPHRASE.encode())
    coordinator = config.load_key("coordinator", passphrase=PASSPHRASE.encode())
    verifier = config.load_key("verifier", passphrase=demo.verifier_passphrase.encode())
    chain = RpcChain(url=config.rpc_url)
    mint, multisig, user = Pubkey.from_string(config.mint), Pubkey.from_string(config.multisig), demo.user
    # Public keys derived once (``Keypair.pubkey()`` derives anew each call), signatures made as the ledger
    # makes them: the baseline is a lean sender, not one paying for work the ledger side is spared.
    keys = {k.pubkey(): k for k in (payer, user, coordinator, verifier)}
    payer_key, user_key, node_key = payer.pubkey(), user.pubkey(), demo.node.pubkey()
    authorities = [coordinator.pubkey(), verifier.pubkey()]
    user_token = txbuild.token_account_of(user_key, mint)
    rent = chain.minimum_rent(txbuild.RENT_SIZES["account"])
    # The release's memo as the ledger writes it (the verdict's report hash and audit leaf): the same bytes.
    cited = [ReportAttestation.parse(stack.reports[job]) for job in jobs]
    verdicts = [
        f":report={a.report_sha256}" + (f":audit={a.audit_leaf}" if a.audit_leaf else "") for a in cited
    ]

    def send_confirmed(instructions: list[Any]) -> None:
        message = Message.new_with_blockhash(instructions, payer_key, chain.latest_blockhash()[0])
        raw = bytes(message)
        required = message.account_keys[: message.header.num_required_signatures]
        tx = Transaction.populate(message, [keys[k].sign_message(raw) for k in required])
        signature = chain.send_raw(bytes(tx))
        while (status := chain.signature_status(signature)) is None:
            time.sleep(0.005)
        assert status.err is None, status

    def pair(i: int) -> None:
        job = f"bare-{i}"
        send_confirmed(
            txbuild.create_escrow(
                payer=payer_key, user=user_key, user_token=user_token, mint=mint,
                decimals=config.decimals, multisig=multisig, job_id=job, amount=MINIMUM + i, rent=rent,
            ),
        )  # fmt: skip
        send_confirmed(
            txbuild.settle_escrow(
                payer=payer_key, escrow=txbuild.escrow_address(payer_key, job, user_key),
                mint=mint, decimals=config.decimals, multisig=multisig,
                recipient_wallet=node_key, amount=MINIMUM + i,
                authority_signers=authorities, memo_text=f"cyxwiz:escrow:release:{job}{verdicts[i]}",
            ),
        )  # fmt: skip

    return pair, chain.close


def _side(stack: _Stack, side: str, jobs: list[str]) -> Pair:
    return _ledger_side(stack, jobs) if side == "escrow" else _bare_side(stack, jobs)


def _in_threads(stack: _Stack, side: str, jobs: list[str], in_flight: int) -> Runner:
    """``in_flight`` pairs at once on threads of this process: one long-lived control-plane process."""
    pair, close = _side(stack, side, jobs)
    return _concurrently(pair, in_flight), close


def _in_processes(stack: _Stack, side: str, jobs: list[str], in_flight: int) -> Runner:
    """``in_flight`` processes, one pair at a time each: how Prefect's process worker runs lifecycles (the
    control worker starts each ``job-lifecycle`` run, with its escrow, in a process of its own)."""
    context = multiprocessing.get_context("spawn")  # never fork a process whose RPC loop thread runs
    pipes, workers = [], []
    for _ in range(in_flight):
        mine, theirs = context.Pipe()
        worker = context.Process(target=_process_main, args=(stack, side, jobs, theirs), daemon=True)
        worker.start()
        pipes.append(mine)
        workers.append(worker)
    for conn in pipes:
        if conn.recv() != "ready":  # pragma: no cover - a worker that failed to start
            raise RuntimeError("a bench worker process did not start")

    def run(indices: range) -> None:
        items = list(indices)
        for k, conn in enumerate(pipes):
            conn.send(items[k::in_flight])
        for conn in pipes:
            if conn.recv() != "done":  # pragma: no cover - the worker's error went to its stderr
                raise RuntimeError("a bench worker process failed")

    def close() -> None:
        for conn in pipes:
            conn.send(None)
        for worker in workers:
            worker.join(30)

    return run, close


def _process_main(stack: _Stack, side: str, jobs: list[str], conn: Any) -> None:
    pair, close = _side(stack, side, jobs)
    conn.send("ready")
    try:
        while (indices := conn.recv()) is not None:
            for i in indices:
                pair(i)
            conn.send("done")
    finally:
        close()


def _concurrently(pair: Callable[[int], None], in_flight: int) -> Callable[[range], None]:
    pool = ThreadPoolExecutor(max_workers=in_flight)

    def run(indices: range) -> None:
        if in_flight == 1:
            for i in indices:
                pair(i)
        else:
            list(pool.map(pair, indices))

    return run


def _cpu_s() -> float:
    """CPU seconds of this process and its children still running (the ledger and verifier services)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _timed(work: Callable[[range], None], indices: range) -> tuple[float, float]:
    started, cpu = time.perf_counter(), _cpu_s()
    work(indices)
    return time.perf_counter() - started, _cpu_s() - cpu


def _lookup_rounds(stack: _Stack) -> int:
    """Blockhash and signature-status calls the escrow side's ledgers made so far, in any process: the
    rounds started in the host rounds files beside the escrow database (:mod:`cyxwiz.ledger.hostrounds`)."""
    from sqlalchemy.engine import make_url

    database = make_url(stack.demo.config.db_url).database
    total = 0
    for suffix in ("-blockhash", "-statuses-confirmed"):
        with suppress(FileNotFoundError):
            total += int.from_bytes(Path(f"{database}{suffix}").read_bytes()[:8], "little")
    return total


def measure(
    n: int = N, in_flight: int = IN_FLIGHT, *, processes: bool = False, audit: bool = True
) -> tuple[float, float, float, float, float]:
    """(escrow pairs/s, bare pairs/s, median of the rounds' own ratios, CPU ratio: the whole machine's
    CPU a bare pair costs ÷ an escrow pair's, all processes counted — the figure host load cannot move,
    since on a loaded host both sides starve alike and the wall ratio drifts towards 1; the escrow side's
    blockhash and status calls per pair, the baseline making four). ``processes``: each escrow in flight in
    a process of its own (the control worker's shape), else threads of one. ``audit``: the ledger and the
    verifier service audit every move, as in the stack."""
    runner = _in_processes if processes else _in_threads
    with tempfile.TemporaryDirectory(prefix="cyxbench-") as tmp, _stack(Path(tmp), audit=audit) as bare_stack:
        jobs = [f"bench-{i}" for i in range(n + in_flight)]  # the last ``in_flight``: the warm-up's
        stack = replace(bare_stack, reports=_reports(bare_stack, jobs))
        escrow, close_escrow = runner(stack, "escrow", jobs, in_flight)
        bare, close_bare = runner(stack, "bare", jobs, in_flight)
        try:
            # One pair for each thread or process of each side outside the clock: their first calls open
            # connections and pools, import lazily imported modules, check the verifier's certificate
            # chain once and ask the rent once (the bare side asked it at set-up). Until session 11 this
            # range was empty and round 0 of the escrow side paid all of that.
            warm = range(n, n + in_flight)
            escrow(warm)
            bare(warm)
            step = n // ROUNDS
            lookups = _lookup_rounds(stack)
            t_escrow = t_bare = c_escrow = c_bare = 0.0
            ratios = []
            for r in range(ROUNDS):
                indices = range(r * step, (r + 1) * step)
                first, second = (bare, escrow) if r % 2 else (escrow, bare)
                m_first, m_second = _timed(first, indices), _timed(second, indices)
                (te, ce), (tb, cb) = (m_second, m_first) if r % 2 else (m_first, m_second)
                ratios.append(tb / te)
                t_escrow, t_bare, c_escrow, c_bare = t_escrow + te, t_bare + tb, c_escrow + ce, c_bare + cb
            lookups = _lookup_rounds(stack) - lookups
        finally:
            close_escrow()
            close_bare()
        done = step * ROUNDS
        return done / t_escrow, done / t_bare, statistics.median(ratios), c_bare / c_escrow, lookups / done


def run(n: int = N, in_flight: int = IN_FLIGHT, *, audit: bool = True) -> list[tuple[str, float, str]]:
    """``in_flight`` escrows at once on threads of one process (reported), then each in a process of its own
    as the control worker runs lifecycles (the goal's figure), then one escrow at a time (reported)."""
    rows: list[tuple[str, float, str]] = []
    for flight, processes in ((in_flight, False), (in_flight, True), (1, False)):
        escrow, bare, median, cpu, lookups = measure(n, flight, processes=processes, audit=audit)
        how = f"{flight} in flight, {'processes' if processes else 'threads'}" if flight > 1 else "sequential"
        rows += [
            (
                f"escrow pairs ÷ bare, over the ledger service ({how})",
                escrow / bare,
                f"{escrow:.0f} vs {bare:.0f} pairs/s; median of {ROUNDS} rounds {median:.3f}; blockhash "
                f"and status calls a pair {lookups:.2f} vs 4 (rounds shared by the escrows in flight); "
                "LiteSVM and the verifier in their own processes, as the stack runs them; "
                + ("every move audited" if audit else "moves not audited (--no-audit)")
                + (
                    " (goal >= 0.8: how the control worker runs lifecycles)"
                    if processes
                    else " (reported: every lifecycle in one process)"
                ),
            ),
            (
                f"same, CPU: bare pair ÷ escrow pair ({how})",
                cpu,
                "the machine's CPU per pair, control plane + ledger service + verifier service",
            ),
        ]
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=N, help=f"escrow pairs per side (default {N})")
    parser.add_argument(
        "--in-flight", type=int, default=IN_FLIGHT, help=f"concurrent escrows (default {IN_FLIGHT})"
    )
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="moves not audited (the stack audits each one; for comparison)",
    )
    args = parser.parse_args()
    for label, ratio, why in run(args.pairs, args.in_flight, audit=not args.no_audit):
        print(f"{label:<56} {ratio:8.3f}  {why}", flush=True)
