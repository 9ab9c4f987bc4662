"""Production entry points of the control plane's listeners: ``python -m infra.serve coordinator|gateway``.

The systemd units in ``infra/systemd`` start these; ``infra/config/*.env`` documents every setting. The
coordinator here is the one the embedded stack runs (Prefect hooks: a submission starts a ``job-lifecycle``
flow run; presigned object URLs served under ``/objects``), not ``cyxwiz serve coordinator``'s bare API,
and the gateway maps each verified node to its work queue (its certificate CN) through the coordinator's
database. Both read the control-plane config (``CYXWIZ_CONTROL_PLANE``) for the database, store and audit
locations; secrets stay in 0600 files named by env vars (SPEC D2), never in the config.

``--check`` opens everything (config, keys, certificates, database) and exits: the units run it as
``ExecStartPre`` so a broken setting fails the start with one line naming the setting, not a traceback.
It also refuses a listener whose account can reach what moves funds: a ledger passphrase, a sealed
authority key, the verifier's key or socket (issue 17; F1, I).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyxwiz.errors import ConfigError, CyxwizError

DEFAULT_PORTS = {"coordinator": 8443, "gateway": 8444}


@dataclass(frozen=True, kw_only=True)
class ListenerSettings:
    """One listener's settings, from the environment (systemd ``EnvironmentFile=``)."""

    host: str
    port: int
    cert: Path
    key: Path
    bundle: Path
    crl: Path | None
    audit_dir: Path | None
    audit_signing_key: Path | None

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str]) -> ListenerSettings:
        def required_path(name: str) -> Path:
            value = env.get(name)
            if not value:
                raise ConfigError(
                    "required setting is missing", field=name, hint=f"see infra/config/{service}.env"
                )
            return Path(value)

        def optional_path(name: str) -> Path | None:
            value = env.get(name)
            return Path(value) if value else None

        raw_port = env.get("CYXWIZ_LISTEN_PORT") or str(DEFAULT_PORTS[service])
        try:
            port = int(raw_port)
        except ValueError:
            raise ConfigError(
                f"must be a port number, got {raw_port!r}", field="CYXWIZ_LISTEN_PORT"
            ) from None
        if not 0 <= port <= 65535:
            raise ConfigError("must be within 0..65535", field="CYXWIZ_LISTEN_PORT")
        return cls(
            host=env.get("CYXWIZ_LISTEN_HOST") or "127.0.0.1",
            port=port,
            cert=required_path("CYXWIZ_TLS_CERT"),
            key=required_path("CYXWIZ_TLS_KEY"),
            bundle=required_path("CYXWIZ_CA_BUNDLE"),
            crl=optional_path("CYXWIZ_CRL"),
            audit_dir=optional_path("CYXWIZ_AUDIT_DIR"),
            audit_signing_key=optional_path("CYXWIZ_AUDIT_SIGNING_KEY"),
        )


def _control_plane(env: Mapping[str, str]) -> Any:
    from tasks.config import ENV_VAR, ControlPlaneConfig

    value = env.get(ENV_VAR)
    if not value:
        raise ConfigError("required setting is missing", field=ENV_VAR, hint="the control-plane JSON file")
    return ControlPlaneConfig.from_file(Path(value))


def _federation(settings: ListenerSettings, env: Mapping[str, str]) -> Any:
    """The federation trust policy (docs/federation.md) when CYXWIZ_TRUST_POLICY names one, else None."""
    path = env.get("CYXWIZ_TRUST_POLICY")
    if not path:
        return None
    if settings.crl is not None:
        raise ConfigError(
            "with a trust policy each organization's CRLs come from its policy entry",
            field="CYXWIZ_CRL",
            rule="A7",
            hint="unset CYXWIZ_CRL; CYXWIZ_CA_BUNDLE = cyxwiz certutil policy-bundle --policy ...",
        )
    from cyxwiz.pki.federation import Federation

    return Federation(policy_path=Path(path))


def _audit(settings: ListenerSettings, config: Any, store: Any = None) -> Any:
    from cyxwiz.audit import AuditLog, ObjectStoreArchive

    archive = ObjectStoreArchive(store=store, encrypt=True) if store is not None else None
    return AuditLog.open(
        settings.audit_dir or config.audit_dir, signing_key=settings.audit_signing_key, archive=archive
    )


def _coordinator_db(config: Any, state_dir: Path) -> str:
    return str(config.coordinator_db or f"sqlite:///{state_dir / 'coordinator.db'}")


class _LateSigner:
    """The URL signer, known once the listener is bound (port 0 picks one); hooks sign only after that."""

    target: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def build_production_coordinator(env: Mapping[str, str]) -> Any:
    """The coordinator with Prefect hooks and the object store's presigned URLs (not started)."""
    from cyxwiz.coordinator.service import build_coordinator
    from cyxwiz.storage.crypto import MasterKey
    from cyxwiz.storage.local import LocalObjectStore
    from cyxwiz.storage.urlsign import UrlSigner, asgi_app
    from tasks.hooks import PrefectHooks

    if env.get("CYXWIZ_CA_DIR"):
        # A CA key on the internet-facing host mints any certificate there, a verifier's included.
        raise ConfigError(
            "the coordinator holds no CA key (issue 17)", field="CYXWIZ_CA_DIR", rule="A7",
            hint="run cyxwiz-issuer.service and set CYXWIZ_ISSUER_SOCKET to its socket",
        )  # fmt: skip
    settings = ListenerSettings.from_env("coordinator", env)
    config = _control_plane(env)
    master = MasterKey.from_env(dict(env))
    if master is None:
        raise ConfigError("required setting is missing", field="CYXWIZ_STORE_MASTER_KEY_FILE", rule="D2")
    state_dir = Path(env.get("CYXWIZ_STATE_DIR") or config.home / "coordinator")
    store = LocalObjectStore(root=config.store_root, master_key=master)
    audit = _audit(settings, config, store)
    issuer_socket = env.get("CYXWIZ_ISSUER_SOCKET")
    signer = _LateSigner()
    handle = build_coordinator(
        cert=settings.cert, key=settings.key, trust_bundle=settings.bundle, crl=settings.crl,
        state_dir=state_dir, db_url=_coordinator_db(config, state_dir),
        cert_issuer=_issuer(Path(issuer_socket)) if issuer_socket else None,
        hooks=PrefectHooks(store=store, signer=signer, api_url=env.get("PREFECT_API_URL")),
        audit=audit, host=settings.host, port=settings.port, max_body=64 << 20,
        policy=_federation(settings, env),
    )  # fmt: skip
    public_url = env.get("CYXWIZ_PUBLIC_URL") or handle.url
    signer.target = UrlSigner.from_master_key(master, base_url=f"{public_url.rstrip('/')}/objects")
    # Starlette passes the full path to mounted apps, so the store app strips the mount itself.
    handle.app.app.mount(  # type: ignore[attr-defined]
        "/objects", asgi_app(store=store, signer=signer.target, mount="/objects", audit=audit)
    )
    return handle.server


def _issuer(socket_path: Path) -> Any:
    """The issuer service's client (the CA key is there, never here), probed before the listener binds."""
    from cyxwiz.issuer.service import RemoteIssuer

    issuer = RemoteIssuer(socket_path=socket_path)
    issuer.ca_certificate()
    return issuer


def build_production_gateway(env: Mapping[str, str]) -> Any:
    """The gateway, verifying session tokens with the coordinator's key ring and revocation list."""
    from cyxwiz.coordinator.service import AUDIENCE, ISSUER
    from cyxwiz.coordinator.store import CoordinatorStore
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.gateway.standing import StoreStanding
    from cyxwiz.tokens.keyring import KeyRing
    from cyxwiz.tokens.reload import KeyRingReloader
    from cyxwiz.tokens.verifier import TokenVerifier

    settings = ListenerSettings.from_env("gateway", env)
    config = _control_plane(env)
    keyring_dir = env.get("CYXWIZ_KEYRING_DIR")
    if not keyring_dir:
        raise ConfigError("required setting is missing", field="CYXWIZ_KEYRING_DIR", hint="the coordinator's")
    upstream = env.get("CYXWIZ_PREFECT_UPSTREAM") or (env.get("PREFECT_API_URL") or "").removesuffix("/api")
    if not upstream:
        raise ConfigError("required setting is missing", field="CYXWIZ_PREFECT_UPSTREAM")
    state_dir = Path(env.get("CYXWIZ_STATE_DIR") or config.home / "coordinator")
    nodes = CoordinatorStore.from_url(_coordinator_db(config, state_dir))
    ring = KeyRing.from_dir(Path(keyring_dir))
    KeyRingReloader(ring=ring, path=Path(keyring_dir)).start()  # rotation reaches the gateway (B4)
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, revocations=nodes)
    server, _ = build_gateway(
        cert=settings.cert, key=settings.key, trust_bundle=settings.bundle, crl=settings.crl,
        upstream=upstream, pool=env.get("CYXWIZ_GATEWAY_POOL") or "gpu", verifier=verifier,
        audit=_audit(settings, config), host=settings.host, port=settings.port,
        upstream_auth=env.get("PREFECT_API_AUTH_STRING") or None, standing=StoreStanding(nodes),
        policy=_federation(settings, env),
    )  # fmt: skip
    return server


#: The passphrases of the ledger's authority keys (and their ``_FILE`` forms): the control worker's and
#: the verifier's, never a listener's.
MONEY_SECRETS = ("CYXWIZ_LEDGER_PASSPHRASE", "CYXWIZ_VERIFIER_PASSPHRASE", "CYXWIZ_ARBITER_PASSPHRASE")


def money_within_reach(ledger_config: Path) -> list[tuple[str, str, Path]]:
    """What this account could use to move escrowed funds: (config field, what, path) for each sealed
    authority key or verifier key it can read, and the verifier's socket if it may connect to it. A
    ledger config this account cannot read names nothing (the runbook keeps only key files private)."""
    from cyxwiz.keys import is_pkcs11_uri
    from cyxwiz.ledger.config import LedgerConfig

    try:
        config = LedgerConfig.from_file(ledger_config)
    except (CyxwizError, OSError):
        return []
    found = []
    for role, ref in sorted(config.keys.items()):
        path = None if is_pkcs11_uri(ref) else config.key_path(role)
        if path is not None and os.access(path, os.R_OK):
            found.append((f"keys.{role}", f"read the ledger's sealed {role} key", path))
    verifier_key = config._path(config.verifier_key)
    if verifier_key is not None and os.access(verifier_key, os.R_OK):
        found.append(("verifier_key", "read the verifier's report-signing key", verifier_key))
    socket_path = config.verifier_socket_path()
    if socket_path is not None and os.access(socket_path, os.W_OK):  # False when absent or unreachable
        found.append(("verifier_socket", "connect to the verifier service's socket", socket_path))
    database = _sqlite_path(config.db_url)
    # The verifier co-signs what the escrow records say: writing them is steering the money.
    if database is not None and (os.access(database, os.W_OK) or os.access(database.parent, os.W_OK)):
        found.append(("db_url", "write the escrow records", database))
    return found


def _sqlite_path(url: str) -> Path | None:
    """The file of an on-disk SQLite URL (relative to the working directory, as SQLite opens it)."""
    if not url.startswith("sqlite"):
        return None
    import sqlalchemy as sa

    database = sa.engine.make_url(url).database
    return Path(database).resolve() if database and database != ":memory:" else None


def refuse_money_within_reach(service: str, env: Mapping[str, str]) -> None:
    """``--check`` of a listener: it faces nodes or users, so it must not be able to reach any key that,
    with another key it can reach, moves funds (issue 17; F1, I). One line naming what it found."""
    for name in MONEY_SECRETS:
        for var in (name, f"{name}_FILE"):
            if env.get(var):
                raise ConfigError(
                    f"the {service} faces nodes and users and is given no ledger passphrase", field=var,
                    rule="F1", hint="only cyxwiz-control.service and cyxwiz-verifier.service get one",
                )  # fmt: skip
    found = money_within_reach(_control_plane(env).ledger_config)
    if found:
        field, what, path = found[0]
        raise ConfigError(
            f"the {service}'s account can {what}", field=field, path=str(path), rule="F1",
            hint="key files belong to cyxwiz-control or cyxwiz-verifier, mode 0600 (docs/runbook.md)",
        )  # fmt: skip


BUILDERS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "coordinator": build_production_coordinator,
    "gateway": build_production_gateway,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("service", choices=sorted(BUILDERS), help="which listener to run")
    parser.add_argument("--check", action="store_true", help="open every setting and exit (ExecStartPre)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            refuse_money_within_reach(args.service, os.environ)
        server = BUILDERS[args.service](os.environ)
    except CyxwizError as exc:
        print(f"cyxwiz {args.service}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.service}: configuration ok ({server.url})")
        return 0
    print(f"{args.service} listening on {server.url}", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then restores this handler and raises the signal again:
    # with the default handler the process would die there, before exit handlers run (the audit's
    # refusal summaries among them); this one makes that a normal exit.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    server.run()
    return 0


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
