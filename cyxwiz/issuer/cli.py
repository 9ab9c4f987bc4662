"""``python -m cyxwiz.issuer serve`` (also ``cyxwiz issuer serve``): run the issuer service (issue 17; A7).

It loads the issuing CA (certificate and key, a ``ca-key.pem`` 0600 or a ``ca-key.uri`` into a PKCS#11
token) and refuses to start, with one line, when the key is not there: the coordinator has no key to fall
back on, so renewal and online revocation wait for this process.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated

import typer

from cyxwiz._cli import new_app

app = new_app(help="The issuer service: the only holder of the issuing CA key; renews worker certificates.")

Opt = typer.Option
CaDir = Annotated[Path, Opt("--ca-dir", help="Issuing CA dir (ca-cert.pem + ca-key.pem or .uri).")]
Socket = Annotated[Path, Opt("--socket", help="Unix socket path.")]
Ready = Annotated[Path | None, Opt("--ready-file", help="Written once listening.")]
Lifetime = Annotated[float, Opt("--lifetime-s", help="Lifetime of a renewed node certificate, seconds.")]
Mode = Annotated[str, Opt("--socket-mode", help="600 (owner only) or 660 (the owner's group too).")]
AuditDir = Annotated[Path | None, Opt("--audit-dir", help="Audit log directory (issuances, revocations).")]
AuditKey = Annotated[
    Path | None,
    Opt("--audit-key", envvar="CYXWIZ_AUDIT_SIGNING_KEY", help="Ed25519 key (0600) signing the audit log."),
]


@app.callback()
def _group() -> None:
    """The issuer service: the only holder of the issuing CA key; renews worker certificates."""


@app.command("serve")
def serve_command(  # noqa: PLR0917 (typer maps options to parameters)
    ca_dir: CaDir,
    socket: Socket = Path("/run/cyxwiz-issuer/issuer.sock"),
    ready_file: Ready = None,
    lifetime_s: Lifetime = 24 * 3600.0,
    socket_mode: Mode = "600",
    audit_dir: AuditDir = None,
    audit_key: AuditKey = None,
) -> None:
    """Serve renewals and CRLs on a Unix socket until interrupted.

    Example: python -m cyxwiz.issuer serve --ca-dir /etc/cyxwiz/pki/ca --socket /run/cyxwiz-issuer/issuer.sock
    """
    from cyxwiz.errors import ConfigError, CyxwizError
    from cyxwiz.issuer.policy import NodeCertIssuer
    from cyxwiz.issuer.service import IssuerService, serve

    if socket_mode not in ("600", "660"):
        raise ConfigError("must be 600 or 660", field="socket_mode", rule="A7")
    audit = None
    if audit_dir is not None:
        from cyxwiz.audit import AuditLog

        audit = AuditLog.open(audit_dir, signing_key=audit_key)
    passphrase = os.environ.get("CYXWIZ_CA_PASSPHRASE")
    try:
        issuer = NodeCertIssuer.from_dir(
            ca_dir,
            lifetime=dt.timedelta(seconds=lifetime_s),
            audit=audit,
            passphrase=passphrase.encode() if passphrase else None,
        )
    except CyxwizError as exc:
        raise ConfigError(
            f"the issuer service cannot load its CA key, not starting: {exc}", field="ca_dir", rule="A7"
        ) from None
    typer.echo(f"issuer service on {socket} (CA {issuer.ca.certificate.subject.rfc4514_string()})", err=True)
    serve(IssuerService(issuer=issuer), socket_path=socket, ready_file=ready_file, mode=int(socket_mode, 8))


if __name__ == "__main__":
    app(prog_name="cyxwiz-issuer")
