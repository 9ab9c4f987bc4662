"""``cyxwiz gateway``: the nodes' mTLS front door to the Prefect API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cyxwiz._cli import new_app

app = new_app(help="Run the mTLS gateway that lets node agents reach only their own part of the Prefect API.")

Opt = typer.Option
PkiDir = Annotated[Path | None, Opt("--pki-dir", help="Dev PKI dir; --cert etc. override it.")]
Cert = Annotated[Path | None, Opt("--cert", help="Gateway certificate (PEM).")]
Key = Annotated[Path | None, Opt("--key", help="Gateway private key (PKCS#8 PEM, 0600).")]
Bundle = Annotated[Path | None, Opt("--bundle", help="Trust bundle (intermediates + roots).")]
Crl = Annotated[Path | None, Opt("--crl", help="CRL file, watched and hot-reloaded.")]
Upstream = Annotated[str, Opt("--upstream", help="Prefect API base URL (loopback).")]
Pool = Annotated[str, Opt("--pool", help="The GPU work pool nodes poll.")]
KeyRingDir = Annotated[Path, Opt("--keyring", help="Token key ring dir of the coordinator (verify only).")]
DbUrl = Annotated[
    str,
    Opt(
        "--db-url",
        help="The coordinator's database (SQLAlchemy URL): bans, revoked sessions and dead job tokens are "
        "read there on every call, and open connections of a banned node are closed.",
    ),
]
AuditDir = Annotated[Path | None, Opt("--audit-dir", help="Audit log directory.")]
AuditKey = Annotated[
    Path | None,
    Opt("--audit-key", envvar="CYXWIZ_AUDIT_SIGNING_KEY", help="Ed25519 key (0600) signing the audit log."),
]
Dev = Annotated[bool, Opt("--dev", help="Development: a throw-away audit key if none is given (warned).")]
Host = Annotated[str, Opt("--host", help="Listen address.")]
Port = Annotated[int, Opt("--port", help="Listen port.")]
TrustPolicyOpt = Annotated[
    Path | None,
    Opt(
        "--trust-policy",
        help="Federation trust policy (YAML, docs/federation.md): per organization its CAs, CRLs, roles and "
        "names; checked on every verified node after the handshake and hot-reloaded (A7).",
    ),
]
JobToken = Annotated[
    bool,
    Opt(
        "--require-job-token/--no-require-job-token",
        help="Calls on a job's flow run also need that job's token (X-Cyxwiz-Job-Token); on by default.",
    ),
]


@app.command("run")
def run(  # noqa: PLR0917 (typer maps options to parameters)
    keyring: KeyRingDir,
    db_url: DbUrl,
    pki_dir: PkiDir = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
    upstream: Upstream = "http://127.0.0.1:4200",
    pool: Pool = "gpu",
    audit_dir: AuditDir = None,
    audit_key: AuditKey = None,
    dev_mode: Dev = False,
    host: Host = "127.0.0.1",
    port: Port = 8444,
    require_job_token: JobToken = True,
    trust_policy: TrustPolicyOpt = None,
) -> None:
    """Serve the gateway until interrupted."""
    from cyxwiz.audit import AuditLog
    from cyxwiz.coordinator.service import AUDIENCE, ISSUER
    from cyxwiz.coordinator.store import CoordinatorStore
    from cyxwiz.errors import ConfigError
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.gateway.standing import StoreStanding
    from cyxwiz.tokens.keyring import KeyRing
    from cyxwiz.tokens.reload import KeyRingReloader
    from cyxwiz.tokens.verifier import TokenVerifier

    if pki_dir is not None:
        from cyxwiz.pki.devpki import build_dev_pki

        dev = build_dev_pki(pki_dir)
        cert, key, bundle, crl = (
            cert or dev.gateway_cert,
            key or dev.gateway_key,
            bundle or dev.bundle,
            crl or dev.crl,
        )
    federation = None
    if trust_policy is not None:
        from cyxwiz.pki.federation import Federation

        federation = Federation(policy_path=trust_policy)
        # OpenSSL verifies against every organization's CAs; the policy then decides per peer.
        bundle = bundle or federation.write_bundle(trust_policy.parent / ".federation-bundle.pem")
    if cert is None or key is None or bundle is None:
        raise ConfigError("--cert, --key and --bundle (or --pki-dir) are required", field="cert", rule="D1")
    store = CoordinatorStore.from_url(db_url)
    ring = KeyRing.from_dir(keyring)
    # Rotation by the scheduled flow reaches this process without restart (B4).
    KeyRingReloader(ring=ring, path=keyring).start()
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, revocations=store)
    audit = AuditLog.open(audit_dir, signing_key=audit_key, dev=dev_mode) if audit_dir is not None else None
    server, _ = build_gateway(
        cert=cert, key=key, trust_bundle=bundle, crl=crl, upstream=upstream, pool=pool, verifier=verifier,
        audit=audit, host=host, port=port, require_job_token=require_job_token, policy=federation,
        standing=StoreStanding(store),
    )  # fmt: skip
    typer.echo(f"gateway listening on {server.url} -> {upstream}")
    server.run()
