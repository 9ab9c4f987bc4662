"""``cyxwiz certutil`` revocation and inspection commands: revoke, gen-crl, verify, inspect, peer-id.

Split from :mod:`cyxwiz.pki.cli` to keep modules small; both register on the same ``app``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from cyxwiz.errors import PKIError, ValidationError
from cyxwiz.pki.cli import CaCert, CaKey, CaPass, _load_ca, app

#: ``verify`` exits 1 when it checked and found the certificate bad; 2 is for usage/file errors.
EXIT_REFUSED = 1


@app.command("revoke")
def revoke(
    *,
    ca_cert: CaCert,
    ca_key: CaKey,
    cert: Annotated[Path | None, typer.Argument(help="Certificate to revoke (issued by this CA).")] = None,
    serial: Annotated[str | None, typer.Option("--serial", help="Revoke by serial (hex) instead.")] = None,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, "
            "cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.",
        ),
    ] = "unspecified",
    ca_passphrase_file: CaPass = None,
) -> None:
    """Record a revocation in the CA's revocation database (beside the CA certificate).

    The CRL changes only when you run gen-crl next.

    Example:
      cyxwiz certutil revoke worker-01-cert.pem --ca-cert intermediate-ca-cert.pem
        --ca-key intermediate-ca-key.pem --reason keyCompromise
    """
    from cyxwiz.pki.ca import parse_reason
    from cyxwiz.pki.certs import load_certificate

    if (cert is None) == (serial is None):
        raise ValidationError("give exactly one of CERT or --serial", field="serial")
    flag = parse_reason(reason)  # before loading anything: a typo must not need the CA key
    ca = _load_ca(ca_cert, ca_key, ca_passphrase_file)
    target: int | x509.Certificate
    if cert is not None:
        target = load_certificate(cert)
    else:
        try:
            target = int(str(serial).replace(":", ""), 16)
        except ValueError:
            raise ValidationError(f"serial {serial!r} is not hexadecimal", field="serial") from None
    entry = ca.revoke(target, reason=flag)
    typer.echo(
        f"revoked serial {entry.serial:x} ({entry.reason.value}) in {ca.db_path}; "
        "run 'cyxwiz certutil gen-crl' to publish"
    )


@app.command("gen-crl")
def gen_crl(
    *,
    ca_cert: CaCert,
    ca_key: CaKey,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the CRL here (default: CA directory).")
    ] = None,
    days: Annotated[
        int, typer.Option("--days", help="nextUpdate = now + days; verifiers fail closed after it.")
    ] = 7,
    ca_passphrase_file: CaPass = None,
) -> None:
    """Sign a fresh CRL from the CA's revocation database (with CRL number and nextUpdate).

    Example:
      cyxwiz certutil gen-crl --ca-cert intermediate-ca-cert.pem --ca-key intermediate-ca-key.pem
        --out crls.pem
    """
    from cyxwiz.pki.certs import write_crl

    ca = _load_ca(ca_cert, ca_key, ca_passphrase_file)
    crl = ca.generate_crl(days=days)
    if out is not None and out.resolve() != ca.crl_path.resolve():
        write_crl(out, crl)
    count = sum(1 for _ in crl)
    typer.echo(f"CRL written: {out or ca.crl_path} ({count} revoked, next update {crl.next_update_utc})")


def _parse_at(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"not an ISO 8601 time: {value!r}", field="at") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@app.command("verify")
def verify(
    *,
    certs: Annotated[
        list[Path], typer.Argument(help="Certificate file(s); extra certs in a file are its chain.")
    ],
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", "--ca-file", help="Trusted CA bundle (roots + intermediates)."),
    ] = None,
    crl: Annotated[
        list[Path] | None, typer.Option("--crl", help="CRL file(s) to check revocation against (repeatable).")
    ] = None,
    purpose: Annotated[str | None, typer.Option("--purpose", help="Require EKU: server | client.")] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Check validity at this ISO 8601 time instead of now.")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="Federation trust policy (YAML): each organization's bundle, CRLs, roles and names "
            "(instead of --ca-bundle/--crl).",
        ),
    ] = None,
) -> None:
    """Verify certificates: chain to a root of the bundle, validity, constraints, usage, revocation.

    Exit 0 when every certificate is good, 1 when one is refused (one line saying why), 2 on bad input.

    Example:
      cyxwiz certutil verify --ca-bundle ca-bundle.pem --crl crls.pem gateway-01-cert.pem
    """
    from cyxwiz.pki.certs import load_certificates, load_crls
    from cyxwiz.pki.verify import verify_certificate

    if purpose not in (None, "server", "client"):
        raise ValidationError("--purpose must be server or client", field="purpose")
    if (ca_bundle is None) == (policy is None):
        raise ValidationError("give exactly one of --ca-bundle or --policy", field="ca_bundle")
    if policy is not None:
        _verify_with_policy(certs, policy=policy, at=_parse_at(at), purpose=purpose)
        return
    assert ca_bundle is not None
    trusted = load_certificates(ca_bundle)
    crls = [c for path in crl or [] for c in load_crls(path)]
    when = _parse_at(at)
    failed = False
    for path in certs:
        leaf, *chain = load_certificates(path)
        try:
            found = verify_certificate(
                leaf,
                trusted=trusted,
                intermediates=chain,
                crls=crls,
                at=when,
                purpose=purpose,  # type: ignore[arg-type]
            )
        except PKIError as exc:
            exc.path = exc.path or str(path)
            typer.echo(f"error: {exc}", err=True)
            failed = True
            continue
        names = " -> ".join(c.subject.rfc4514_string() for c in found)
        typer.echo(f"{path}: OK ({names})")
    if failed:
        raise typer.Exit(EXIT_REFUSED)


def _verify_with_policy(
    certs: list[Path], *, policy: Path, at: dt.datetime | None, purpose: str | None
) -> None:
    """``verify --policy``: each certificate against the federation's trust policy (A7, C1)."""
    from cyxwiz.pki.certs import load_certificates
    from cyxwiz.pki.trust_policy import TrustPolicy

    loaded = TrustPolicy.load(policy)
    crls = loaded.load_crls()
    failed = False
    for path in certs:
        leaf, *chain = load_certificates(path)
        try:
            decision = loaded.evaluate(leaf, crls=crls, at=at, purpose=purpose, intermediates=chain)
        except PKIError as exc:
            exc.path = exc.path or str(path)
            typer.echo(f"error: {exc}", err=True)
            failed = True
            continue
        names = " -> ".join(c.subject.rfc4514_string() for c in decision.chain)
        typer.echo(f"{path}: OK (organization {decision.organization}: {names})")
    if failed:
        raise typer.Exit(EXIT_REFUSED)


@app.command("policy-bundle")
def policy_bundle(
    *,
    policy: Annotated[Path, typer.Option("--policy", help="Federation trust policy (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle to write (PEM, 0644).")],
) -> None:
    """Every organization's CAs in one bundle: the trust store of a listener run with --trust-policy.

    Example:
      cyxwiz certutil policy-bundle --policy trust-policy.yaml --out federation-bundle.pem
    """
    from cyxwiz.pki._files import PUBLIC_MODE, write_atomic
    from cyxwiz.pki.trust_policy import TrustPolicy

    loaded = TrustPolicy.load(policy)
    write_atomic(out, loaded.bundle_pem(), mode=PUBLIC_MODE, overwrite=True)
    names = ", ".join(o.name for o in loaded.organizations)
    typer.echo(f"bundle written: {out} ({len(loaded.all_cas())} CA certificates of {names})")


@app.command("fetch-crls")
def fetch_crls_command(
    *,
    policy: Annotated[Path, typer.Option("--policy", help="Federation trust policy (YAML).")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per download.")] = 10.0,
) -> None:
    """Download each organization's published CRLs (its crl_url), check them, and install the good ones.

    Run it from a timer (cron, systemd) more often than the shortest CRL validity; exit 1 when an
    organization's download was refused (its CRL in force stays; when that goes stale, its nodes are refused).

    Example:
      cyxwiz certutil fetch-crls --policy trust-policy.yaml
    """
    from cyxwiz.pki.crl_fetch import fetch_crls
    from cyxwiz.pki.trust_policy import TrustPolicy

    outcomes = fetch_crls(TrustPolicy.load(policy), timeout=timeout)
    for name, outcome in outcomes.items():
        typer.echo(f"{name}: {outcome}", err=outcome.startswith("refused"))
    if any(o.startswith("refused") for o in outcomes.values()):
        raise typer.Exit(EXIT_REFUSED)


@app.command("inspect")
def inspect(
    *,
    file: Annotated[Path, typer.Argument(help="Certificate, bundle or CRL (PEM).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what a certificate (or each one of a bundle) or a CRL contains, with PeerID and thumbprints.

    Example:
      cyxwiz certutil inspect gateway-01-cert.pem
      cyxwiz certutil inspect --json ca-bundle.pem
    """
    from rich.console import Console
    from rich.table import Table

    from cyxwiz.pki._files import read_bytes
    from cyxwiz.pki.certs import load_certificates, load_crls
    from cyxwiz.pki.inspection import certificate_info, crl_info

    data = read_bytes(file, what="input")
    if b"-----BEGIN X509 CRL-----" in data:
        infos = [crl_info(c) for c in load_crls(file)]
    else:
        infos = [certificate_info(c) for c in load_certificates(file)]
    if as_json:
        typer.echo(json.dumps(infos if len(infos) > 1 else infos[0], indent=2))
        return
    console = Console()
    for info in infos:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")  # fingerprints must never be cut with an ellipsis
        for key, value in info.items():
            table.add_row(f"[bold]{key}[/bold]", _show(value))
        console.print(table, soft_wrap=True)
        console.print()


def _show(value: object) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, list):
        if isinstance(value[0], dict):
            return "; ".join(" ".join(f"{k}={v}" for k, v in entry.items()) for entry in value)
        return ", ".join(str(v) for v in value)
    return str(value)


@app.command("peer-id")
def peer_id_command(
    *,
    cert: Annotated[Path | None, typer.Argument(help="Certificate whose key names the peer.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Derive from a private key file instead.")] = None,
) -> None:
    """Print the libp2p PeerID (12D3KooW...) of a certificate's Ed25519 key, as Hypha derives it.

    Example:
      cyxwiz certutil peer-id gateway-01-cert.pem
    """
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id

    if (cert is None) == (key is None):
        raise ValidationError("give exactly one of CERT or --key", field="cert")
    try:
        typer.echo(peer_id(load_certificate(cert) if cert is not None else load_private_key(key)))  # type: ignore[arg-type]
    except PKIError as exc:
        exc.path = exc.path or str(cert or key)
        raise
