"""Embedded default for the demo, flows and tests: the local ledger service as a subprocess, and provisioning.

    with start_local_ledger(state_dir) as ledger_service:
        demo = provision_demo(rpc_url=ledger_service.rpc_url, state_dir=state_dir, passphrase=b"...")
        ledger = demo.open_ledger()            # payer + coordinator key; the verifier co-signs via its socket
        ledger.create(job_id="job-1", user=demo.user, amount=2 * demo.minimum_payment)

The service process owns LiteSVM; every other process (flows, agents, coordinator) reaches it over
loopback JSON-RPC through :class:`~cyxwiz.ledger.rpc.RpcChain`, exactly as it would reach a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from solders.keypair import Keypair

from cyxwiz.errors import LedgerError
from cyxwiz.ledger import provision
from cyxwiz.ledger.config import LedgerConfig, open_ledger
from cyxwiz.ledger.keystore import KdfParams, write_keypair

DEMO_DECIMALS = 6


class LocalLedgerHandle:
    """A running local ledger service subprocess; a context manager. ``rpc_url`` is where it listens."""

    def __init__(
        self, *, state_dir: Path, dev_methods: bool = False, startup_timeout_s: float = 30.0
    ) -> None:
        self.state_dir = state_dir
        self.dev_methods = dev_methods
        self.startup_timeout_s = startup_timeout_s
        self.rpc_url = ""
        self._port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> LocalLedgerHandle:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ready = self.state_dir / "service.ready.json"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "cyxwiz.ledger.service_cli", "serve",
            "--state-dir", str(self.state_dir), "--port", str(self._port), "--ready-file", str(ready),
        ]  # fmt: skip
        if self.dev_methods:
            argv.append("--dev-methods")
        log = (self.state_dir / "service.log").open("ab")
        self._process = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while not ready.exists():
            if self._process.poll() is not None:
                raise LedgerError(f"local ledger service exited at start: {self._last_log_line()}", rule="F2")
            if time.monotonic() > deadline:
                self.kill()
                raise LedgerError("local ledger service did not become ready in time")
            time.sleep(0.05)
        info: dict[str, Any] = json.loads(ready.read_text(encoding="utf-8"))
        self.rpc_url = str(info["rpc_url"])
        self._port = int(self.rpc_url.rsplit(":", 1)[1])
        self._wait_healthy(deadline)
        return self

    def _wait_healthy(self, deadline: float) -> None:
        import httpx

        body = {"jsonrpc": "2.0", "id": 1, "method": "getHealth"}
        while True:
            try:
                if httpx.post(self.rpc_url, json=body, timeout=2).json().get("result") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise LedgerError("local ledger service is not answering")
            time.sleep(0.05)

    def _last_log_line(self) -> str:
        lines = (
            (self.state_dir / "service.log")
            .read_text(encoding="utf-8", errors="replace")
            .strip()
            .splitlines()
        )
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after 10 s)."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """``kill -9``: what a crash does; the snapshot must still hold every committed balance."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    def restart(self) -> LocalLedgerHandle:
        """Stop and start again on the same port, so existing clients keep working."""
        self.stop()
        return self.start()

    def __enter__(self) -> LocalLedgerHandle:
        return self if self._process is not None and self._process.poll() is None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_local_ledger(state_dir: Path, *, dev_methods: bool = False) -> LocalLedgerHandle:
    """Start the local ledger service on a free loopback port and wait until it answers."""
    return LocalLedgerHandle(state_dir=state_dir, dev_methods=dev_methods).start()


@dataclass(frozen=True)
class DemoLedger:
    """Everything ``provision_demo`` made. ``user``/``node`` are the demo's own wallets (keys in memory)."""

    config_path: Path
    config: LedgerConfig
    user: Keypair
    node: Keypair
    user_funds: int
    minimum_payment: int
    #: each authority key is sealed under its own passphrase (F1): the verifier service's and the arbiter's
    verifier_passphrase: str = ""
    arbiter_passphrase: str = ""

    def open_ledger(self, *, roles: tuple[str, ...] = ("coordinator",), **kwargs: Any) -> Any:
        """An EscrowLedger over JSON-RPC (see :func:`cyxwiz.ledger.config.open_ledger`)."""
        return open_ledger(self.config, roles=roles, **kwargs)

    def verifier_env(self) -> dict[str, str]:
        """What the verifier service process needs beyond the config: its own passphrase."""
        return {"CYXWIZ_VERIFIER_PASSPHRASE": self.verifier_passphrase}


def _socket_path(state_dir: Path) -> str:
    """Under the state dir when short enough for a Unix socket (108 bytes), else a fresh 0700 temp dir."""
    import tempfile

    wanted = state_dir.resolve() / "verifier" / "verifier.sock"
    if len(str(wanted)) < 100:
        return str(wanted)
    return str(Path(tempfile.mkdtemp(prefix="cyxwiz-verifier-")) / "verifier.sock")


def provision_demo(
    *,
    rpc_url: str,
    state_dir: Path,
    passphrase: bytes,
    user_funds: int = 1_000_000_000,
    minimum_payment: int = 1_000_000,
    db_url: str | None = None,
    kdf: KdfParams | None = None,
    pki: Any = None,
    verifier_passphrase: str | None = None,
    arbiter_passphrase: str | None = None,
    node_funds: int = 0,
    minimum_stake: int = 0,
) -> DemoLedger:
    """Make a test mint, the 2-of-3 escrow multisig (coordinator, verifier, arbiter), the 2-of-2 dispute
    multisig (arbiter, verifier), a funded user, a node wallet.

    Sealed key files (0600, Argon2id + AES-256-GCM) go to ``state_dir/keys``: the verifier's and the
    arbiter's under their own passphrases (fresh random ones unless given). ``pki`` (a
    :class:`~cyxwiz.pki.devpki.DevPKI`) names the verifier certificate and the trust anchors of reports.
    ``state_dir/ledger.json`` is the config (``CYXWIZ_LEDGER_CONFIG``). Amounts are base units (6 decimals).
    """
    import secrets

    from cyxwiz.ledger.rpc import RpcChain

    verifier_passphrase = verifier_passphrase or secrets.token_urlsafe(24)
    arbiter_passphrase = arbiter_passphrase or secrets.token_urlsafe(24)
    own = {"verifier": verifier_passphrase.encode(), "arbiter": arbiter_passphrase.encode()}

    keys_dir = state_dir / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    roles = {name: Keypair() for name in ("payer", "coordinator", "verifier", "arbiter", "mint_authority")}
    user, node = Keypair(), Keypair()
    chain = RpcChain(url=rpc_url)
    try:
        for wallet, lamports in (
            (roles["payer"], 100 * 10**9), (roles["arbiter"], 10**9), (user, 10**9), (node, 10**9)
        ):  # fmt: skip
            chain.airdrop(wallet.pubkey(), lamports)
        payer = roles["payer"]
        authorities = [roles[r].pubkey() for r in ("coordinator", "verifier", "arbiter")]
        multisig = provision.create_multisig(chain, payer=payer, authorities=authorities, threshold=2)
        dispute_multisig = provision.create_multisig(
            chain,
            payer=payer,
            authorities=[roles["arbiter"].pubkey(), roles["verifier"].pubkey()],
            threshold=2,
        )
        mint = provision.create_test_mint(
            chain, payer=payer, mint_authority=roles["mint_authority"].pubkey(), decimals=DEMO_DECIMALS
        )
        provision.fund_wallet(
            chain, payer=payer, mint=mint, wallet=user.pubkey(), amount=user_funds,
            mint_authority=roles["mint_authority"],
        )  # fmt: skip
        provision.fund_wallet(
            chain, payer=payer, mint=mint, wallet=node.pubkey(), amount=node_funds,
            mint_authority=roles["mint_authority"] if node_funds else None,
        )  # fmt: skip
    finally:
        chain.close()
    key_files: dict[str, str] = {}
    for name, keypair in {**roles, "user": user, "node": node}.items():
        path = keys_dir / f"{name}.key"
        write_keypair(path, keypair, passphrase=own.get(name, passphrase), params=kdf, overwrite=True)
        key_files[name] = str(path.relative_to(state_dir))
    trust: dict[str, Any] = {}
    if pki is not None:
        trust = {
            "trust_bundle": str(pki.bundle), "crl": str(pki.crl),
            "verifier_cert": str(pki.verifier_cert), "verifier_key": str(pki.verifier_key),
        }  # fmt: skip
    config = LedgerConfig(
        rpc_url=rpc_url,
        db_url=db_url or f"sqlite:///{(state_dir / 'escrow.db').resolve()}",
        mint=str(mint),
        decimals=DEMO_DECIMALS,
        multisig=str(multisig),
        minimum_payment=minimum_payment,
        keys=key_files,
        dispute_multisig=str(dispute_multisig),
        verifier_socket=_socket_path(state_dir),
        minimum_stake=minimum_stake,
        **trust,
    )
    config_path = state_dir / "ledger.json"
    config.to_file(config_path)
    return DemoLedger(
        config_path=config_path,
        config=LedgerConfig.from_file(config_path),
        user=user,
        node=node,
        user_funds=user_funds,
        minimum_payment=minimum_payment,
        verifier_passphrase=verifier_passphrase,
        arbiter_passphrase=arbiter_passphrase,
    )
