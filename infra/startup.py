"""Starting the embedded control plane's services, one function each: the verifier service, SoftHSM2, the
audit log and its anchor wallet, the object store, the gateway and the coordinator, and the control-plane
configuration the flows load. :func:`infra.stack.embedded_stack` puts them together."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.wallets import anchor_wallet

Say = Callable[[str], None]


def start_verifier(home: Path, env: dict[str, str], demo_ledger: Any, say: Say) -> Any:
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


def start_issuer(home: Path, pki: Any, env: dict[str, str], say: Say) -> Any:
    """The issuer service in its own process: the only one holding the issuing CA key (issue 17, A7). It
    gets none of the control plane's passphrases; a CA key in SoftHSM2 is reached through its URI."""
    from cyxwiz.issuer.service import start_issuer_service

    secret = ("CYXWIZ_LEDGER_PASSPHRASE", "CYXWIZ_ARBITER_PASSPHRASE", "CYXWIZ_VERIFIER_PASSPHRASE")
    own = {k: v for k, v in env.items() if k not in secret}
    audit_key = home / "issuer" / "audit-key.pem"  # its own log: a revocation the coordinator asks is audited
    if not audit_key.exists():
        from cyxwiz.pki.keys import generate_ed25519, write_private_key

        audit_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_key(audit_key, generate_ed25519())
    issuer = start_issuer_service(ca_dir=pki.ca_dir, state_dir=home / "issuer", env=own, audit_key=audit_key)
    say(f"Issuer service (own process, the only holder of the CA key) on {issuer.socket_path}")
    return issuer


def start_hsm(home: Path, say: Say) -> Any:
    from infra.hsm import start_embedded_hsm

    keys = start_embedded_hsm(home / "hsm")
    say(f"SoftHSM2 token 'cyxwiz' ({keys.token.conf}): CA, token, audit and escrow keys made inside it")
    return keys


def hsm_keyring_dir(state_dir: Path, uri: str) -> Path:
    """A token-held key ring in the coordinator's ring directory (``ring.json`` only): its keys are made
    inside the token under ``uri``'s label prefix, and so is every later one, so ``cyxwiz token rotate``
    and the ``signing-key-rotation`` flow rotate it there (B4, A7); the coordinator loads and follows it
    like any ring directory."""
    from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing

    path = state_dir / "keyring"
    DirKeyRingStore(path).save(KeyRing.in_token(uri))
    return path


def open_audit(
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
        anchor_wallet(home, env, rpc_url=anchor[0], passphrase=anchor[1])

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


def open_store(home: Path, env: dict[str, str]) -> tuple[Any, Any]:
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


def start_gateway(
    stack: contextlib.ExitStack,
    *,
    pki: Any,
    server: Any,
    coordinator: Any,
    audit: Any,
    host: str = "127.0.0.1",
    trust_policy: Path | None = None,
) -> str:
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.gateway.standing import StoreStanding

    listener, _ = build_gateway(
        cert=pki.gateway_cert,
        key=pki.gateway_key,
        trust_bundle=pki.bundle,
        crl=None if trust_policy else pki.crl,
        policy=federation(trust_policy),
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


def start_coordinator(
    *,
    ledger_config: Any,
    pki: Any,
    state_dir: Path,
    store: Any,
    master: Any,
    audit: Any,
    api_url: str,
    cert_issuer: Any = None,
    keyring: Any = None,
    host: str = "127.0.0.1",
    trust_policy: Path | None = None,
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
        crl=None if trust_policy else pki.crl,
        policy=federation(trust_policy),
        state_dir=state_dir,
        cert_issuer=cert_issuer,
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


def federation(trust_policy: Path | None) -> Any:
    """A listener's own :class:`~cyxwiz.pki.federation.Federation` (its own reload state), or None."""
    if trust_policy is None:
        return None
    from cyxwiz.pki.federation import Federation

    return Federation(policy_path=trust_policy)


def register_foreign_nodes(pki: Any, foreign: dict[str, tuple[Path, Path]]) -> None:
    """The control plane's copy of each other organization's node certificate, where it keeps its own
    nodes' (verification and staking read it by name); the node's key stays with the node."""
    import shutil

    for name, (cert, _key) in foreign.items():
        target = pki.root / "nodes" / f"{name}-cert.pem"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cert, target)


def persist_config(
    home: Path,
    *,
    pki: Any,
    ledger_config_path: Path,
    coordinator_url: str,
    env: dict[str, str],
    trust_policy: Path | None = None,
    issuer_socket: Path | None = None,
) -> Path:
    """The control-plane config as a file (the env fallback) and as the ``default`` ControlPlaneBlock (what
    ``make demo``'s flows load; ``CYXWIZ_CONTROL_PLANE_BLOCK=default`` selects it), pointed at by ``env``
    and this process's environment; the cached services reopen with it. The block holds no secret: the
    ledger passphrase and the store master key reach the control worker through ``env`` only (issue 17)."""
    from blocks.control_plane import DEFAULT_NAME, ControlPlaneBlock
    from tasks import services
    from tasks.config import ENV_VAR, ControlPlaneConfig

    config = ControlPlaneConfig(
        home=home,
        pki_root=pki.root,
        ledger_config=ledger_config_path,
        store_root=home / "store",
        audit_dir=home / "audit",
        coordinator_url=coordinator_url,
        coordinator_db=f"sqlite:///{home / 'coordinator' / 'coordinator.db'}",
        keyring_dir=home / "coordinator" / "keyring",  # the coordinator's ring: what rotation rotates (B4)
        trust_policy=trust_policy,
        issuer_socket=issuer_socket,
    )
    path = home / "control-plane.json"
    config.to_file(path)
    ControlPlaneBlock.from_config(config).save(DEFAULT_NAME, overwrite=True)
    env[ENV_VAR] = str(path)
    os.environ.update(
        {k: env[k] for k in (ENV_VAR, "CYXWIZ_LEDGER_PASSPHRASE", "CYXWIZ_STORE_MASTER_KEY_FILE")}
    )
    services.reset()
    return path
