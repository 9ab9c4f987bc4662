"""The embedded control plane in one place: what ``make demo`` and the end-to-end tests start.

Prefect server (SQLite), dev PKI, local ledger service (LiteSVM) with a funded user, local object store,
audit log, coordinator (mTLS, presigned object URLs), the project deployed, and node agents as separate
processes that reach the coordinator over mTLS. Everything binds to loopback; :meth:`EmbeddedStack.close`
(or leaving the ``with`` block, Ctrl-C included) stops every process it started.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import startup, wallets
from infra.deploy import deploy_one, deploy_project, prefect_cli, register_block_types
from infra.local_server import LocalPrefectServer, local_prefect_server, stop_process_group
from infra.wallets import STAKE

__all__ = ["STAKE", "EmbeddedStack", "deploy_one", "embedded_stack", "prefect_cli"]

PROJECT = Path(__file__).resolve().parents[1]
Say = Callable[[str], None]


@dataclass
class EmbeddedStack:
    home: Path
    prefect: LocalPrefectServer
    pki: Any
    ledger: Any
    coordinator: Any
    store: Any
    audit: Any
    config_path: Path
    env: dict[str, str]
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: ``demo --hsm``: the pkcs11: URIs of the keys kept in the embedded SoftHSM2 token (infra.hsm).
    hsm: Any = None
    #: the verifier service process (holds the verifier's escrow key; co-signs releases, F1)
    verifier: Any = None
    #: the issuer service process (the only holder of the issuing CA key; renews worker certificates, A7)
    issuer: Any = None
    #: the local ledger service's handle (kill/restart on the same port: infra.chaos)
    ledger_service: Any = None

    #: Each demo user's own wallet (a sealed key under ``home/users/<name>``, opened by that user's client).
    users: dict[str, Any] = field(default_factory=dict)
    #: Node name -> the public key of the payout wallet it registers (the key stays with its operator).
    node_wallets: dict[str, str] = field(default_factory=dict)
    #: Nodes certified by another organization of the federation: name -> (certificate, key) files.
    foreign_nodes: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def balances(self) -> dict[str, int]:
        """Token balances: ``user`` (demo-user) and ``node`` (node-1), plus ``user:<name>`` and
        ``node:<name>`` for every wallet the stack handed out."""
        from solders.pubkey import Pubkey

        from cyxwiz.ledger.rpc import RpcChain
        from cyxwiz.ledger.txbuild import token_account_of

        config = self.ledger.config
        mint = Pubkey.from_string(config.mint)
        chain = RpcChain(url=config.rpc_url)
        owners = {f"user:{n}": w.address for n, w in self.users.items()}
        owners |= {f"node:{n}": w for n, w in self.node_wallets.items()}
        try:
            found = {
                name: chain.token_amount(token_account_of(Pubkey.from_string(addr), mint)) or 0
                for name, addr in owners.items()
            }
        finally:
            chain.close()
        return {"user": found.get("user:demo-user", 0), "node": found.get("node:node-1", 0), **found}

    def add_user(self, name: str, *, funds: int = 1_000_000_000) -> Any:
        """A new demo user with their own funded wallet (sealed key + 0600 passphrase file)."""
        self.users[name] = wallets.user_wallet(
            self.ledger.config, self._ledger_passphrase(), self.home, name, funds=funds
        )
        return self.users[name]

    def wallet(self, user: str) -> Any:
        """``user``'s own wallet (a :class:`cyxwiz.jobs.wallet.UserWallet`): what their client signs with."""
        return self.users[user] if user in self.users else self.add_user(user)

    def fund(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` as the user's client submits it: a job id and the lock signed by the user's wallet."""
        from cyxwiz.ledger.view import LedgerView

        view = LedgerView.from_config(self.ledger.config)
        try:
            user = str(spec.get("user", "user"))
            return dict(self.wallet(user).fund_spec(spec, view.funding_terms(), user=user))
        finally:
            view.close()

    def node_wallet(self, name: str) -> str:
        """The payout wallet node ``name`` registers (made on first use, key kept on the node side)."""
        if name not in self.node_wallets:
            path = self.home / "node-wallets" / f"{name}.key"
            self.node_wallets[name] = str(
                wallets.new_wallet(self.ledger.config, self._ledger_passphrase(), path)
            )
        return self.node_wallets[name]

    def _ledger_passphrase(self) -> bytes:
        return self.env["CYXWIZ_LEDGER_PASSPHRASE"].encode()

    def start_agent(
        self, name: str, *, extra_env: dict[str, str] | None = None, limit: int | None = None
    ) -> subprocess.Popen[bytes]:
        """A node agent process (``python -m agents``) with its own certificate and work queue; ``limit``:
        the most jobs it runs at once."""
        if name in self.foreign_nodes:
            cert, key = self.foreign_nodes[name]
        else:
            self.pki_for(name)
            cert, key = self.pki.node_cert(name), self.pki.node_key(name)
        work = self.home / "agents" / name
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {
            **self.env,
            "CYXWIZ_NODE_NAME": name,
            "CYXWIZ_NODE_CERT": str(cert),
            "CYXWIZ_NODE_KEY": str(key),
            "CYXWIZ_CA_BUNDLE": str(self.pki.bundle),
            "CYXWIZ_CRL": str(self.pki.crl),
            "CYXWIZ_COORDINATOR_URL": self.coordinator.url,
            "CYXWIZ_WORK_ROOT": str(work),
            "CYXWIZ_SANDBOX_MAX_MEMORY_MB": "2048",
            "CYXWIZ_NODE_WALLET": self.node_wallet(name),
            **(extra_env or {}),
        }
        env.pop("CYXWIZ_CONTROL_PLANE", None)  # a node knows nothing of the control plane's files
        log = (work / "agent.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents", "--heartbeat", "2", *(["--limit", str(limit)] if limit else [])],
            env=env,
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.agents[name] = proc
        return proc

    def start_control_worker(self) -> subprocess.Popen[bytes]:
        """A process worker on the ``control`` pool: runs ``job-lifecycle`` flow runs started by the
        coordinator when a user submits through the API (``cyxwiz job submit``)."""
        work = self.home / "control-worker"
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = (work / "worker.log").open("ab")
        proc = subprocess.Popen(
            # The recovering launcher: a restarted worker marks the runs its predecessor died with CRASHED.
            [sys.executable, "-m", "infra.control_worker", "--pool", "control", "--name", "cyxwiz-control"],
            env=self.env,
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.agents["__control__"] = proc
        return proc

    def pki_for(self, name: str) -> None:
        from cyxwiz.pki.devpki import build_dev_pki

        if not self.pki.node_cert(name).exists():
            self.pki = build_dev_pki(self.pki.root, nodes=(*self.pki.nodes, name))

    def wait_for_node(self, name: str, *, timeout: float = 90.0) -> None:
        from tasks.coordinator_channel import node_name

        deadline = time.monotonic() + timeout
        # The agent keeps its session once the coordinator's answer reaches it, which may be after the
        # coordinator recorded the node: a test that reads the session right away must find it.
        session = self.home / "agents" / name / "session.json"
        while time.monotonic() < deadline:
            started_here = name in self.agents
            for record in self.coordinator.store.list_nodes():
                heard = node_name(record.subject) == name and record.last_heartbeat is not None
                if heard and (not started_here or session.exists()):
                    return
            proc = self.agents.get(name)
            if proc is not None and proc.poll() is not None:
                log = (self.home / "agents" / name / "agent.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"agent {name} exited with {proc.returncode}:\n{log}")
            time.sleep(0.5)
        raise TimeoutError(f"node {name} did not register and heartbeat within {timeout:.0f} s")

    def stop_agent(self, name: str) -> None:
        proc = self.agents.pop(name, None)
        if proc is not None:
            stop_process_group(proc)

    def close(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)


@contextlib.contextmanager
def embedded_stack(
    home: Path,
    *,
    say: Say = print,
    nodes: tuple[str, ...] = ("node-1",),
    lifecycle_deployment: bool = False,
    gateway: bool = True,
    hsm: bool = False,
    bind_host: str = "127.0.0.1",
    prefect_host: str = "127.0.0.1",
    prefect_database_url: str | None = None,
    deploy_all: bool = False,
    trust_policy: Path | None = None,
    foreign_nodes: dict[str, tuple[Path, Path]] | None = None,
    prefect_timeout: float = 120.0,
) -> Iterator[EmbeddedStack]:
    """Start the whole embedded control plane under ``home`` (a fresh state each time).

    ``lifecycle_deployment`` also deploys ``job-lifecycle`` (for submissions through the coordinator API;
    start :meth:`EmbeddedStack.start_control_worker` to run them). With ``gateway`` (the default) node
    agents reach the Prefect API only through the mTLS gateway, via their loopback tunnel. The multi-host
    harness (``infra.cluster``) binds the coordinator and gateway to ``bind_host`` (its service address)
    and runs Prefect on ``prefect_database_url`` (PostgreSQL) listening on ``prefect_host``.

    ``trust_policy`` runs a federation (docs/federation.md): the coordinator and the gateway decide every
    client certificate by it (each organization's CRL file, no single CRL) and verification judges node
    certificates by it; ``foreign_nodes`` (name -> certificate and key files issued by another
    organization of it) are funded and staked like the dev PKI's ``nodes``.
    """
    from cyxwiz.ledger.embedded import provision_demo, start_local_ledger
    from cyxwiz.pki.devpki import build_dev_pki

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    foreign = dict(foreign_nodes or {})
    with contextlib.ExitStack() as stack:
        keys = startup.start_hsm(home, say) if hsm else None
        ca_keys = {"root": keys.root_ca, "issuing": keys.issuing_ca} if keys else None
        pki = build_dev_pki(home / "pki", nodes=nodes, ca_keys=ca_keys)
        say(f"PKI ready: root CA, issuing CA, CRL, certificates for {', '.join(nodes)} ({pki.root})")
        startup.register_foreign_nodes(pki, foreign)

        server = stack.enter_context(
            local_prefect_server(
                home / "prefect",
                host=prefect_host,
                database_url=prefect_database_url,
                timeout=prefect_timeout,
            )
        )
        say(f"Prefect server on {server.ui_url}")
        os.environ.update(server.env())
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_API_URL, temporary_settings

        # Prefect snapshots settings at import; this process's flows must talk to this server.
        stack.enter_context(
            temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_API_URL: server.api_url})
        )

        passphrase = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            **server.env(),
            "CYXWIZ_PROJECT_DIR": str(PROJECT),
            "CYXWIZ_LEDGER_PASSPHRASE": passphrase,
        }
        ledger_dir = home / "ledger"
        ledger_service = stack.enter_context(start_local_ledger(ledger_dir / "service"))
        demo_ledger = provision_demo(
            rpc_url=ledger_service.rpc_url, state_dir=ledger_dir, passphrase=passphrase.encode(), pki=pki,
            node_funds=STAKE * (len(nodes) + len(foreign)), minimum_stake=STAKE,
        )  # fmt: skip
        say(
            f"Ledger service (LiteSVM) on {ledger_service.rpc_url}: mint, 2-of-3 multisig, funded user wallet"
        )
        if keys is not None:
            from infra.hsm import move_escrow_authorities

            demo_ledger = move_escrow_authorities(demo_ledger, passphrase=passphrase.encode(), keys=keys)
            say("Escrow multisig re-made over the coordinator, verifier and arbiter keys in SoftHSM2")

        store, master = startup.open_store(home, env)
        audit = startup.open_audit(
            home, env, store, key_uri=keys.audit if keys else None,
            anchor=(ledger_service.rpc_url, passphrase.encode()),
        )  # fmt: skip
        stack.callback(audit.close)

        if keys is not None:
            startup.hsm_keyring_dir(home / "coordinator", keys.token_signing)
        issuer = stack.enter_context(startup.start_issuer(home, pki, env, say))
        coordinator = startup.start_coordinator(
            ledger_config=demo_ledger.config,
            pki=pki,
            state_dir=home / "coordinator",
            store=store,
            master=master,
            audit=audit,
            api_url=server.api_url,
            cert_issuer=issuer.client(),
            host=bind_host,
            trust_policy=trust_policy,
        )
        stack.callback(coordinator.stop)
        say(f"Coordinator (mTLS, TLS 1.3, CRL hot reload) on {coordinator.url}")
        if gateway:
            gateway_url = startup.start_gateway(
                stack, pki=pki, server=server, coordinator=coordinator, audit=audit, host=bind_host,
                trust_policy=trust_policy,
            )  # fmt: skip
            env["CYXWIZ_GATEWAY_URL"] = gateway_url
            say(f"Gateway to the Prefect API (mTLS, per-node allow-list) on {gateway_url}")

        demo_ledger = wallets.hand_out_wallets(demo_ledger)
        config_path = startup.persist_config(
            home,
            pki=pki,
            ledger_config_path=demo_ledger.config_path,
            coordinator_url=coordinator.url,
            env=env,
            trust_policy=trust_policy,
            issuer_socket=issuer.socket_path,
        )
        verifier = stack.enter_context(startup.start_verifier(home, env, demo_ledger, say))
        wallets.stake_nodes(pki, demo_ledger, (*nodes, *foreign), say)

        deploy_project(env, lifecycle=lifecycle_deployment, everything=deploy_all)
        say("Deployed sandboxed-train to the gpu work pool")
        if deploy_all:
            say(f"Every deployment of prefect.yaml deployed; block types: {register_block_types()}")
        built = EmbeddedStack(
            home=home, prefect=server, pki=pki, ledger=demo_ledger, coordinator=coordinator, store=store,
            audit=audit, config_path=config_path, env=env, hsm=keys, verifier=verifier, issuer=issuer,
            ledger_service=ledger_service, users={"demo-user": wallets.demo_user_wallet(demo_ledger, home)},
            node_wallets={"node-1": str(demo_ledger.node.pubkey())}, foreign_nodes=foreign,
        )  # fmt: skip
        stack.callback(built.close)
        yield built
