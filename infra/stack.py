"""The embedded control plane in one place: what ``make demo`` and the end-to-end tests start.

Prefect server (SQLite), dev PKI, local ledger service (LiteSVM) with a funded user, local object store,
audit log, coordinator (mTLS, presigned object URLs), the project deployed, and node agents as separate
processes that reach the coordinator over mTLS. Everything binds to loopback; :meth:`EmbeddedStack.close`
(or leaving the ``with`` block, Ctrl-C included) stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.local_server import LocalPrefectServer, local_prefect_server, stop_process_group

PROJECT = Path(__file__).resolve().parents[1]
#: each embedded node's stake: the minimum to be dispatched to (base units; the demo's minimum payment)
STAKE = 1_000_000
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

    #: Each demo user's own wallet (a sealed key under ``home/users/<name>``, opened by that user's client).
    users: dict[str, Any] = field(default_factory=dict)
    #: Node name -> the public key of the payout wallet it registers (the key stays with its operator).
    node_wallets: dict[str, str] = field(default_factory=dict)

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
        self.users[name] = _user_wallet(self, name, funds=funds)
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
            self.node_wallets[name] = str(_new_wallet(self, self.home / "node-wallets" / f"{name}.key"))
        return self.node_wallets[name]

    def start_agent(self, name: str, *, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A node agent process (``python -m agents``) with its own certificate and work queue."""
        self.pki_for(name)
        work = self.home / "agents" / name
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {
            **self.env,
            "CYXWIZ_NODE_NAME": name,
            "CYXWIZ_NODE_CERT": str(self.pki.node_cert(name)),
            "CYXWIZ_NODE_KEY": str(self.pki.node_key(name)),
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
            [sys.executable, "-m", "agents", "--heartbeat", "2"],
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
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "control", "--type", "process"],
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
        while time.monotonic() < deadline:
            for record in self.coordinator.store.list_nodes():
                if node_name(record.subject) == name and record.last_heartbeat is not None:
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


def prefect_cli(*args: str, env: dict[str, str]) -> str:
    """``python -m prefect ARGS`` run in the project directory: its stdout, or RuntimeError with the tail."""
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def deploy_one(env: dict[str, str], directory: Path, *, name: str, entrypoint: str, pool: str) -> None:
    """Deploy one flow outside prefect.yaml (tests, benchmarks) through a throw-away prefect file."""
    prefect_file = directory / f"{name}-prefect.yaml"
    prefect_file.write_text(
        f"name: cyxwiz-{name}\n"
        "pull:\n"
        "  - prefect.deployments.steps.set_working_directory:\n"
        f"      directory: {json.dumps(str(PROJECT))}\n"
        "deployments:\n"
        f"  - name: {name}\n"
        f"    entrypoint: {entrypoint}\n"
        "    work_pool:\n"
        f"      name: {pool}\n"
        "      work_queue_name: default\n",
        encoding="utf-8",
    )
    prefect_cli("--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--name", name, env=env)


def _deploy(env: dict[str, str], *, lifecycle: bool, everything: bool = False) -> None:
    steps: list[tuple[str, ...]] = [
        ("work-pool", "create", "gpu", "--type", "cyxwiz-sandbox", "--overwrite"),
        ("work-pool", "create", "control", "--type", "process", "--overwrite"),
    ]
    if everything:
        # Every deployment of prefect.yaml: job-lifecycle (the UI's parameter form) and the maintenance
        # flows with their schedules, next to the node deployments.
        steps.append(("--no-prompt", "deploy", "--all"))
    else:
        steps.append(("--no-prompt", "deploy", "--name", "sandboxed-train"))
    if lifecycle and not everything:
        steps.append(("--no-prompt", "deploy", "--name", "job-lifecycle"))
    for args in steps:
        prefect_cli(*args, env=env)


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
) -> Iterator[EmbeddedStack]:
    """Start the whole embedded control plane under ``home`` (a fresh state each time).

    ``lifecycle_deployment`` also deploys ``job-lifecycle`` (for submissions through the coordinator API;
    start :meth:`EmbeddedStack.start_control_worker` to run them). With ``gateway`` (the default) node
    agents reach the Prefect API only through the mTLS gateway, via their loopback tunnel. The multi-host
    harness (``infra.cluster``) binds the coordinator and gateway to ``bind_host`` (its service address)
    and runs Prefect on ``prefect_database_url`` (PostgreSQL) listening on ``prefect_host``.
    """
    from cyxwiz.ledger.embedded import provision_demo, start_local_ledger
    from cyxwiz.pki.devpki import build_dev_pki
    from tasks import services
    from tasks.config import ENV_VAR, ControlPlaneConfig

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.ExitStack() as stack:
        keys = _start_hsm(home, say) if hsm else None
        ca_keys = {"root": keys.root_ca, "issuing": keys.issuing_ca} if keys else None
        pki = build_dev_pki(home / "pki", nodes=nodes, ca_keys=ca_keys)
        say(f"PKI ready: root CA, issuing CA, CRL, certificates for {', '.join(nodes)} ({pki.root})")

        server = stack.enter_context(
            local_prefect_server(home / "prefect", host=prefect_host, database_url=prefect_database_url)
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
            node_funds=STAKE * len(nodes), minimum_stake=STAKE,
        )  # fmt: skip
        say(
            f"Ledger service (LiteSVM) on {ledger_service.rpc_url}: mint, 2-of-3 multisig, funded user wallet"
        )
        if keys is not None:
            from infra.hsm import move_escrow_authorities

            demo_ledger = move_escrow_authorities(demo_ledger, passphrase=passphrase.encode(), keys=keys)
            say("Escrow multisig re-made over the coordinator, verifier and arbiter keys in SoftHSM2")

        store, master = _open_store(home, env)
        audit = _open_audit(
            home, env, store, key_uri=keys.audit if keys else None,
            anchor=(ledger_service.rpc_url, passphrase.encode()),
        )  # fmt: skip
        stack.callback(audit.close)

        coordinator_dir = home / "coordinator"
        coordinator = _start_coordinator(
            ledger_config=demo_ledger.config,
            pki=pki,
            state_dir=coordinator_dir,
            store=store,
            master=master,
            audit=audit,
            api_url=server.api_url,
            keyring=_hsm_keyring(keys.token_signing) if keys else None,
            host=bind_host,
        )
        stack.callback(coordinator.stop)
        say(f"Coordinator (mTLS, TLS 1.3, CRL hot reload) on {coordinator.url}")
        if gateway:
            gateway_url = _start_gateway(
                stack, pki=pki, server=server, coordinator=coordinator, audit=audit, host=bind_host
            )
            env["CYXWIZ_GATEWAY_URL"] = gateway_url
            say(f"Gateway to the Prefect API (mTLS, per-node allow-list) on {gateway_url}")

        demo_ledger = _hand_out_wallets(demo_ledger, home, passphrase.encode())
        config = ControlPlaneConfig(
            home=home,
            pki_root=pki.root,
            ledger_config=demo_ledger.config_path,
            store_root=home / "store",
            audit_dir=home / "audit",
            coordinator_url=coordinator.url,
            coordinator_db=f"sqlite:///{coordinator_dir / 'coordinator.db'}",
        )
        config_path = home / "control-plane.json"
        _persist_config(config, config_path, env)
        env[ENV_VAR] = str(config_path)
        os.environ.update(
            {k: env[k] for k in (ENV_VAR, "CYXWIZ_LEDGER_PASSPHRASE", "CYXWIZ_STORE_MASTER_KEY_FILE")}
        )
        for cached in (services.config, services.audit, services.ledger, services.control_channel):
            cached.cache_clear()
        verifier = _stake_nodes(
            pki, demo_ledger, nodes, say, stack.enter_context(_start_verifier(home, env, demo_ledger, say))
        )

        _deploy(env, lifecycle=lifecycle_deployment, everything=deploy_all)
        say("Deployed sandboxed-train to the gpu work pool")
        built = EmbeddedStack(
            home=home, prefect=server, pki=pki, ledger=demo_ledger, coordinator=coordinator, store=store,
            audit=audit, config_path=config_path, env=env, hsm=keys, verifier=verifier,
            users={"demo-user": _demo_user_wallet(demo_ledger, home)},
            node_wallets={"node-1": str(demo_ledger.node.pubkey())},
        )  # fmt: skip
        stack.callback(built.close)
        yield built


def _stake_nodes(pki: Any, demo_ledger: Any, nodes: tuple[str, ...], say: Say, verifier: Any) -> Any:
    """Lock each node's minimum stake (the node wallet signs the deposit) so it may be dispatched to (F1);
    returns ``verifier`` (the verifier service, started first)."""
    from cyxwiz.ledger.stake import StakeLedger
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.peerid import peer_id
    from tasks import services

    stakes = StakeLedger(ledger=services.ledger(), policy=demo_ledger.config.stake_policy())
    for name in nodes:
        peer = peer_id(load_certificate(pki.node_cert(name)))
        staked = stakes.stake(peer_id=peer, node=demo_ledger.node, amount=STAKE)
        say(f"{name} staked {staked.amount:,} base units in {staked.stake_account} (2-of-3 authority)")
    return verifier


def _start_verifier(home: Path, env: dict[str, str], demo_ledger: Any, say: Say) -> Any:
    """The verifier service in its own process with its own passphrase and without the control plane's."""
    from cyxwiz.ledger.verifier_service import start_verifier_service

    own = {k: v for k, v in env.items() if k not in ("CYXWIZ_LEDGER_PASSPHRASE", "CYXWIZ_ARBITER_PASSPHRASE")}
    verifier = start_verifier_service(
        config_path=demo_ledger.config_path,
        state_dir=home / "verifier",
        env={**own, **demo_ledger.verifier_env()},
        module="tasks.verifier_service",
    )
    say(f"Verifier service (own process, own key, co-signs passing releases) on {verifier.socket_path}")
    return verifier


def _start_hsm(home: Path, say: Say) -> Any:
    from infra.hsm import start_embedded_hsm

    keys = start_embedded_hsm(home / "hsm")
    say(f"SoftHSM2 token 'cyxwiz' ({keys.token.conf}): CA, token, audit and escrow keys made inside it")
    return keys


def _hsm_keyring(uri: str) -> Any:
    from cyxwiz.keys import open_key_source
    from cyxwiz.tokens.keyring import KeyRing

    return KeyRing.from_key_source(open_key_source(uri))


def _open_audit(
    home: Path,
    env: dict[str, str],
    store: Any,
    *,
    key_uri: str | None = None,
    anchor: tuple[str, bytes] | None = None,
) -> Any:
    """The audit log with signed checkpoints and daily digests (a fresh Ed25519 key, 0600, or ``key_uri``
    in a PKCS#11 token) archived to the store (H3); ``anchor`` = (ledger RPC URL, passphrase) provisions
    the wallet that anchors its checkpoints on the ledger (H4)."""
    from cyxwiz.audit import AuditLog, ObjectStoreArchive
    from cyxwiz.pki.keys import generate_ed25519, write_private_key

    if anchor is not None:
        _anchor_wallet(home, env, rpc_url=anchor[0], passphrase=anchor[1])

    key_path = home / "audit-signing-key.pem"
    if not key_uri and not key_path.exists():
        write_private_key(key_path, generate_ed25519())
    env["CYXWIZ_AUDIT_SIGNING_KEY"] = key_uri or str(key_path)
    os.environ["CYXWIZ_AUDIT_SIGNING_KEY"] = key_uri or str(key_path)
    signing_key: Any = key_path
    if key_uri:
        from cyxwiz.keys import open_key_source

        signing_key = open_key_source(key_uri)
    return AuditLog.open(
        home / "audit", signing_key=signing_key, archive=ObjectStoreArchive(store=store, encrypt=True)
    )


def _anchor_wallet(home: Path, env: dict[str, str], *, rpc_url: str, passphrase: bytes) -> None:
    """A dedicated low-value wallet (fees only, sealed 0600) that pays the audit-anchor memos (H4)."""
    from solders.keypair import Keypair

    from cyxwiz.ledger.keystore import KdfParams, write_keypair
    from cyxwiz.ledger.rpc import RpcChain

    wallet = Keypair()
    chain = RpcChain(url=rpc_url)
    try:
        chain.airdrop(wallet.pubkey(), 10**8)
    finally:
        chain.close()
    path = home / "audit-anchor.key"
    write_keypair(path, wallet, passphrase=passphrase, params=KdfParams.fast_for_tests(), overwrite=True)
    values = {"CYXWIZ_AUDIT_ANCHOR_KEY": str(path), "CYXWIZ_AUDIT_ANCHOR_PUBKEY": str(wallet.pubkey())}
    env.update(values)
    os.environ.update(values)


def _open_store(home: Path, env: dict[str, str]) -> tuple[Any, Any]:
    """The local object store with a fresh master key in a 0600 file (envelope encryption, D2)."""
    from cyxwiz.storage.crypto import MasterKey
    from cyxwiz.storage.local import LocalObjectStore

    master = MasterKey.generate()
    key_file = home / "store-master.key"
    if key_file.exists():
        key_file.unlink()
    master.write(key_file)
    env["CYXWIZ_STORE_MASTER_KEY_FILE"] = str(key_file)
    return LocalObjectStore(root=home / "store", master_key=master), master


def _start_gateway(
    stack: contextlib.ExitStack,
    *,
    pki: Any,
    server: Any,
    coordinator: Any,
    audit: Any,
    host: str = "127.0.0.1",
) -> str:
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.gateway.standing import StoreStanding

    listener, _ = build_gateway(
        cert=pki.gateway_cert,
        key=pki.gateway_key,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        upstream=server.api_url.removesuffix("/api"),
        pool="gpu",
        verifier=coordinator.verifier,
        audit=audit,
        # Each node's work queue is its node id (the gateway's default mapping), never its CN.
        # Bans, revoked sessions and dead job tokens reach the gateway from the coordinator's records.
        standing=StoreStanding(coordinator.store),
        host=host,
    )
    listener.start()
    stack.callback(listener.stop)
    return str(listener.url)


def _start_coordinator(
    *,
    ledger_config: Any,
    pki: Any,
    state_dir: Path,
    store: Any,
    master: Any,
    audit: Any,
    api_url: str,
    keyring: Any = None,
    host: str = "127.0.0.1",
) -> Any:
    """Coordinator with the Prefect hooks and the object store's presigned URLs served under /objects."""
    from cyxwiz.coordinator.service import build_coordinator
    from cyxwiz.ledger.view import LedgerView
    from cyxwiz.storage.urlsign import UrlSigner, asgi_app
    from tasks.hooks import PrefectHooks

    class _Signer:
        # The URL is known once the socket is bound (at build time); hooks sign only after that.
        target: Any = None

        def __getattr__(self, name: str) -> Any:
            return getattr(self.target, name)

    signer = _Signer()
    handle = build_coordinator(
        cert=pki.coordinator_cert,
        key=pki.coordinator_key,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        state_dir=state_dir,
        ca_dir=pki.ca_dir,
        hooks=PrefectHooks(
            store=store, signer=signer, api_url=api_url, ledger=LedgerView.from_config(ledger_config)
        ),
        audit=audit,
        max_body=64 << 20,
        keyring=keyring,
        host=host,
    )
    signer.target = UrlSigner.from_master_key(master, base_url=f"{handle.url}/objects")
    # Starlette passes the full path to mounted apps, so the store app strips the mount itself.
    handle.app.app.mount(  # type: ignore[attr-defined]
        "/objects", asgi_app(store=store, signer=signer.target, mount="/objects", audit=audit)
    )
    handle.server.start()
    return handle


def _persist_config(config: Any, path: Path, env: dict[str, str]) -> None:
    """The control-plane config as a file (the env fallback) and as the ``default`` ControlPlaneBlock with
    its secrets (what ``make demo``'s flows load; ``CYXWIZ_CONTROL_PLANE_BLOCK=default`` selects it)."""
    from blocks.control_plane import DEFAULT_NAME, ControlPlaneBlock

    config.to_file(path)
    master = Path(env["CYXWIZ_STORE_MASTER_KEY_FILE"]).read_text(encoding="ascii").strip()
    ControlPlaneBlock.from_config(
        config, ledger_passphrase=env["CYXWIZ_LEDGER_PASSPHRASE"], store_master_key=master
    ).save(DEFAULT_NAME, overwrite=True)


def _hand_out_wallets(demo: Any, home: Path, ledger_passphrase: bytes) -> Any:
    """Take the demo user's and node's keys out of the control plane's ledger directory: the user's goes
    to the user's own area (their client signs with it), the node's to its operator; the ledger config
    keeps only the escrow authorities, the payer and the test mint authority (F1, C2)."""
    import dataclasses

    from cyxwiz.ledger.config import LedgerConfig

    keys = {k: v for k, v in demo.config.keys.items() if k not in ("user", "node")}
    for name in ("user", "node"):
        path = demo.config.key_path(name)
        if path is not None:
            path.unlink(missing_ok=True)
    dataclasses.replace(demo.config, keys=keys).to_file(demo.config_path)
    return dataclasses.replace(demo, config=LedgerConfig.from_file(demo.config_path))


def _user_dir(home: Path, name: str) -> tuple[Path, bytes]:
    """``home/users/<name>``: the user's wallet key and its passphrase file, both 0600."""
    directory = home / "users" / name
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_urlsafe(24).encode()
    pass_file = directory / "wallet.pass"
    fd = os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return directory, secret


def _demo_user_wallet(demo: Any, home: Path) -> Any:
    from cyxwiz.jobs.wallet import UserWallet
    from cyxwiz.ledger.keystore import write_keypair

    directory, secret = _user_dir(home, "demo-user")
    write_keypair(directory / "wallet.key", demo.user, passphrase=secret, overwrite=True)
    return UserWallet(path=directory / "wallet.key", passphrase=secret)


def _new_wallet(stack: EmbeddedStack, path: Path, *, passphrase: bytes | None = None, funds: int = 0) -> Any:
    from cyxwiz.ledger.rpc import RpcChain
    from cyxwiz.ledger.wallets import create_wallet

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    chain = RpcChain(url=stack.ledger.config.rpc_url)
    try:
        return create_wallet(
            chain,
            config=stack.ledger.config,
            ledger_passphrase=stack.env["CYXWIZ_LEDGER_PASSPHRASE"].encode(),
            path=path,
            passphrase=passphrase or secrets.token_urlsafe(24).encode(),
            funds=funds,
        )
    finally:
        chain.close()


def _user_wallet(stack: EmbeddedStack, name: str, *, funds: int) -> Any:
    from cyxwiz.jobs.wallet import UserWallet

    directory, secret = _user_dir(stack.home, name)
    _new_wallet(stack, directory / "wallet.key", passphrase=secret, funds=funds)
    return UserWallet(path=directory / "wallet.key", passphrase=secret)
