"""``cyxwiz serve``: run the coordinator API over mTLS, or print its OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cyxwiz._cli import new_app

app = new_app(help="Run the coordinator API (HTTPS/JSON over TLS 1.3, client certificates for nodes).")

_PKI_HELP = (
    "Dev PKI directory (cyxwiz.pki.devpki layout); individual --cert/--key/--bundle/--crl override it."
)


Opt = typer.Option
PkiDir = Annotated[
    Path | None, Opt("--pki-dir", help="Dev PKI dir (devpki layout); --cert etc. override it.")
]
Cert = Annotated[Path | None, Opt("--cert", help="Server certificate (PEM).")]
Key = Annotated[Path | None, Opt("--key", help="Server private key (PKCS#8 PEM, 0600).")]
Bundle = Annotated[Path | None, Opt("--bundle", help="Trust bundle (intermediates + roots).")]
Crl = Annotated[Path | None, Opt("--crl", help="CRL file, watched and hot-reloaded.")]
IssuerSocket = Annotated[
    Path | None,
    Opt("--issuer-socket", help="Issuer service socket (renewal, admin revoke); the CA key stays there."),
]
StateDir = Annotated[Path, Opt("--state-dir", help="Database and token key ring.")]
DbUrl = Annotated[str | None, Opt("--db", help="SQLAlchemy URL (default: SQLite in the state dir).")]
AuditDir = Annotated[Path | None, Opt("--audit-dir", help="Audit log directory.")]
AuditKey = Annotated[
    Path | None,
    Opt("--audit-key", envvar="CYXWIZ_AUDIT_SIGNING_KEY", help="Ed25519 key (0600) signing the audit log."),
]
Dev = Annotated[
    bool,
    Opt(
        "--dev",
        help="Development only (warned at start and in /v1/health): permissive hooks (no escrow, any proof "
        "accepted) and a throw-away audit key if none is given.",
    ),
]
Config = Annotated[
    Path | None,
    Opt(
        "--config",
        envvar="CYXWIZ_COORDINATOR_CONFIG",
        help="Production: JSON naming TLS files, CRL, state and audit dirs, ledger config, object store and "
        "the Prefect API; a missing part stops the start.",
    ),
]
Host = Annotated[str, Opt("--host", help="Listen address.")]
Port = Annotated[int, Opt("--port", help="Listen port.")]
Out = Annotated[Path | None, Opt("--out", help="Write here instead of stdout.")]


@app.command("coordinator")
def coordinator(  # noqa: PLR0917 (typer maps options to parameters)
    pki_dir: PkiDir = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
    issuer_socket: IssuerSocket = None,
    state_dir: StateDir = Path(".cyxwiz/coordinator"),
    db_url: DbUrl = None,
    audit_dir: AuditDir = None,
    audit_key: AuditKey = None,
    dev_mode: Dev = False,
    config: Config = None,
    host: Host = "127.0.0.1",
    port: Port = 8443,
) -> None:
    """Serve the coordinator until interrupted.

    Production: [bold]cyxwiz serve coordinator --config coordinator.json[/bold] wires the real ledger
    view, object store, proof check and Prefect control channel, and refuses to start without any of them.

    Development: [bold]cyxwiz serve coordinator --dev --pki-dir .demo/pki[/bold] (permissive hooks, warned).
    """
    from cyxwiz.audit import AuditLog
    from cyxwiz.coordinator.service import build_coordinator
    from cyxwiz.errors import ConfigError

    if config is not None:
        if dev_mode:
            raise ConfigError("--config (production) and --dev exclude each other", field="dev")
        _serve_production(config, audit_key=audit_key)
        return
    if not dev_mode:
        raise ConfigError(
            "the production coordinator needs --config FILE (ledger, object store, proof check, Prefect "
            "control channel); --dev runs the permissive development hooks instead",
            field="config",
        )
    from cyxwiz.coordinator.config import DEV_WARNING

    typer.echo(f"WARNING: {DEV_WARNING}", err=True)
    issuer_process = None
    if pki_dir is not None:
        from cyxwiz.pki.devpki import build_dev_pki

        dev = build_dev_pki(pki_dir)
        cert, key, bundle = cert or dev.coordinator_cert, key or dev.coordinator_key, bundle or dev.bundle
        crl = crl or dev.crl
        if issuer_socket is None:
            # Even in development the CA key never enters this process: the dev CA gets its own issuer.
            import os
            import signal

            from cyxwiz.issuer.service import start_issuer_service

            # uvicorn re-raises a SIGTERM after its shutdown: exit through ``finally`` (the issuer stops).
            # Set before the issuer starts, so a SIGTERM at any moment from here on stops it too.
            signal.signal(signal.SIGTERM, _exit)
            issuer_process = start_issuer_service(
                ca_dir=dev.ca_dir, state_dir=state_dir / "issuer", env=dict(os.environ)
            )
            issuer_socket = issuer_process.socket_path
    try:
        if cert is None or key is None or bundle is None:
            raise ConfigError(
                "--cert, --key and --bundle (or --pki-dir) are required", field="cert", rule="D1"
            )
        audit = None if audit_dir is None else AuditLog.open(audit_dir, signing_key=audit_key, dev=dev_mode)
        handle = build_coordinator(
            cert=cert, key=key, trust_bundle=bundle, crl=crl, cert_issuer=_remote(issuer_socket),
            state_dir=state_dir, db_url=db_url, audit=audit, host=host, port=port,
        )  # fmt: skip
        typer.echo(f"coordinator listening on {handle.url}")
        handle.server.run()
    finally:
        if issuer_process is not None:
            issuer_process.stop()


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _remote(socket_path: Path | None) -> Any:
    if socket_path is None:
        return None
    from cyxwiz.issuer.service import RemoteIssuer

    return RemoteIssuer(socket_path=socket_path)


def _serve_production(path: Path, *, audit_key: Path | None) -> None:
    import importlib

    from cyxwiz.audit import AuditLog
    from cyxwiz.coordinator.config import CoordinatorConfig
    from cyxwiz.errors import ConfigError

    config = CoordinatorConfig.from_file(path)
    try:
        # The wiring lives with the Prefect layer (the control channel starts flow runs); the core only
        # names it, so ``cyxwiz`` itself still imports no Prefect.
        wire = importlib.import_module("tasks.hooks").production_coordinator
    except ImportError:
        raise ConfigError("the control-plane package (tasks) is not installed", field="config") from None
    audit = AuditLog.open(config.audit_dir, signing_key=audit_key)
    handle = wire(config, audit=audit)
    typer.echo(f"coordinator listening on {handle.url} (production: ledger, store, proof check, Prefect)")
    handle.server.run()


@app.command("openapi")
def openapi(out: Out = None) -> None:
    """Print the coordinator's OpenAPI document."""
    import tempfile

    from cyxwiz.coordinator.api import create_app
    from cyxwiz.coordinator.hooks import BasicHooks
    from cyxwiz.coordinator.service import AUDIENCE, ISSUER
    from cyxwiz.coordinator.store import CoordinatorStore
    from cyxwiz.tokens.issuer import TokenIssuer
    from cyxwiz.tokens.keyring import KeyRing
    from cyxwiz.tokens.verifier import TokenVerifier

    ring = KeyRing.generate()
    with tempfile.TemporaryDirectory() as tmp:
        store = CoordinatorStore.from_url(f"sqlite:///{tmp}/o.db")
        guarded = create_app(
            store=store,
            issuer=TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE),
            verifier=TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE),
            hooks=BasicHooks(),
        )
        text = json.dumps(guarded.app.openapi(), indent=2)  # type: ignore[attr-defined]
        store.engine.dispose()
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")
