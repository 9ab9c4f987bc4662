"""``cyxwiz certutil``: the PKI command line (SPEC A1–A7), flag-compatible with Hypha's ``hypha-certutil``.

Hypha's documented commands work unchanged (``gen-ca --out-cert --out-key --common-name``,
``gen-intermediate-ca``/``gen-cert --ca-cert --ca-key``, ``verify --ca-bundle BUNDLE --crl CRL CERT``,
``peer-id CERT``); CSRs, revocation, CRLs, bundles, inspection and roles come on top.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from cyxwiz._cli import new_app
from cyxwiz.errors import CyxwizError, PKIError, ValidationError
from cyxwiz.pki.ca import CertificateAuthority

app = new_app(
    help=(
        "Ed25519 PKI for cyxwiz nodes: CAs, node certificates, CSRs, revocation, CRLs, verification, "
        "PeerIDs.\n\n"
        "Keys are PKCS#8 PEM written 0600; certificates, bundles and CRLs PEM 0644. Flags follow "
        "hypha-certutil, so its documentation carries over."
    )
)

OutCert = Annotated[Path, typer.Option("--out-cert", help="Where to write the certificate (PEM, 0644).")]
OutKey = Annotated[
    Path, typer.Option("--out-key", help="Where to write the new private key (PKCS#8 PEM, 0600).")
]
CaCert = Annotated[Path, typer.Option("--ca-cert", help="Issuing CA certificate (PEM).")]
CaKey = Annotated[
    str,
    typer.Option(
        "--ca-key",
        help="Issuing CA private key: a PKCS#8 PEM file (0600) or a PKCS#11 key, e.g. "
        "'pkcs11:token=cyxwiz;object=issuing-ca' (PIN from ?pin-source=file:... or CYXWIZ_PKCS11_PIN).",
    ),
]
OutCaKey = Annotated[
    str,
    typer.Option(
        "--out-key",
        help="Where the new CA key goes: a file (PKCS#8 PEM, 0600) or a 'pkcs11:token=...;object=...' URI "
        "(the key is generated inside the token and never leaves it).",
    ),
]
CaPass = Annotated[
    Path | None,
    typer.Option(
        "--ca-passphrase-file",
        help="File holding the CA key passphrase (else env CYXWIZ_CA_PASSPHRASE, if the key is encrypted).",
    ),
]
NewPass = Annotated[
    Path | None,
    typer.Option("--passphrase-file", help="Encrypt the new key (PKCS#8) with the passphrase in this file."),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
CommonName = Annotated[str, typer.Option("--common-name", "--cn", help="Subject common name.")]
Org = Annotated[str | None, typer.Option("--organization", "-o", help="Subject organization (O).")]
Dns = Annotated[list[str] | None, typer.Option("--dns", help="DNS subjectAltName (repeatable).")]
Ip = Annotated[list[str] | None, typer.Option("--ip", help="IP subjectAltName (repeatable).")]
RoleOpt = Annotated[
    str, typer.Option("--role", help="gateway | coordinator | scheduler | worker | data | verifier | user")
]
Server = Annotated[
    bool | None, typer.Option("--server/--no-server", help="serverAuth EKU (default: by role).")
]
Client = Annotated[bool | None, typer.Option("--client/--no-client", help="clientAuth EKU (default: yes).")]
LeafDays = Annotated[int, typer.Option("--days", help="Validity in days (1..365; 90 recommended).")]


def _passphrase(path: Path | None, *, env: str | None = "CYXWIZ_CA_PASSPHRASE") -> bytes | None:
    if path is not None:
        try:
            data = path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise PKIError(f"cannot read passphrase file: {exc.strerror}", path=str(path)) from None
        if not data:
            raise ValidationError("passphrase file is empty", path=str(path), field="passphrase")
        return data
    value = os.environ.get(env) if env else None
    return value.encode() if value else None


def _load_ca(ca_cert: Path, ca_key: str, passphrase_file: Path | None) -> CertificateAuthority:
    return CertificateAuthority.from_files(ca_cert, ca_key, passphrase=_passphrase(passphrase_file))


def _node_key_file(path: Path | None, *, flag: str) -> None:
    """Node TLS keys stay files: Python's ssl module cannot use a PKCS#11 key (docs/keys.md)."""
    if path is not None and str(path).startswith("pkcs11:"):
        raise ValidationError(
            "node TLS keys must be files: Python's ssl cannot use a key inside a PKCS#11 token",
            field=flag,
            rule="A7",
            hint="only CA keys (--ca-key, gen-ca/gen-intermediate-ca --out-key) may be pkcs11: URIs",
        )


def _default_server(role: str) -> bool:
    # Users and verifiers only ever call out; every other role also accepts connections (libp2p-style peers).
    return role.strip().lower() not in {"user", "verifier"}


def _leaf_sans(common_name: str, dns: list[str], server: bool) -> list[str]:
    """Hypha names servers by CN (``gateway-01.hypha.local``): a server cert gets its CN as DNS SAN too."""
    from cyxwiz.pki.profiles import check_dns_name

    if not server or dns:
        return dns
    try:
        return [check_dns_name(common_name)]
    except ValidationError:
        return []


@app.command("gen-ca")
def gen_ca(
    *,
    out_cert: OutCert,
    out_key: OutCaKey,
    common_name: CommonName,
    organization: Org = None,
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 3650,
    path_length: Annotated[
        int | None, typer.Option("--path-length", help="Max intermediates below (default: any).")
    ] = None,
    passphrase_file: NewPass = None,
    force: Force = False,
) -> None:
    """Create a self-signed root CA (Ed25519); its key in a file or generated inside a PKCS#11 token.

    Example:
      cyxwiz certutil gen-ca --out-cert root-ca-cert.pem --out-key root-ca-key.pem
        --common-name "Hypha Root CA"
      cyxwiz certutil gen-ca --out-cert root-ca-cert.pem --out-key 'pkcs11:token=cyxwiz;object=root-ca'
        --common-name "Hypha Root CA"
    """
    ca = CertificateAuthority.create_root(
        cert_path=out_cert,
        key_path=out_key,
        common_name=common_name,
        organization=organization,
        days=days,
        path_length=path_length,
        passphrase=_passphrase(passphrase_file, env=None),
        overwrite=force,
    )
    typer.echo(f"root CA written: {out_cert} (key {out_key}, serial {ca.certificate.serial_number:x})")


@app.command("gen-intermediate-ca")
def gen_intermediate_ca(
    *,
    ca_cert: CaCert,
    ca_key: CaKey,
    out_cert: OutCert,
    out_key: OutCaKey,
    common_name: CommonName,
    organization: Org = None,
    days: Annotated[
        int, typer.Option("--days", help="Validity in days (capped at the parent's expiry).")
    ] = 1825,
    path_length: Annotated[
        int, typer.Option("--path-length", help="Max CAs below this one (0: issues leaves only).")
    ] = 0,
    ca_passphrase_file: CaPass = None,
    passphrase_file: NewPass = None,
    force: Force = False,
) -> None:
    """Create an intermediate CA signed by another CA.

    Example:
      cyxwiz certutil gen-intermediate-ca --ca-cert root-ca-cert.pem --ca-key root-ca-key.pem
        --out-cert intermediate-ca-cert.pem --out-key intermediate-ca-key.pem
        --common-name "Hypha Intermediate CA"
    """
    parent = _load_ca(ca_cert, ca_key, ca_passphrase_file)
    child = parent.create_intermediate(
        cert_path=out_cert,
        key_path=out_key,
        common_name=common_name,
        organization=organization,
        days=days,
        path_length=path_length,
        passphrase=_passphrase(passphrase_file, env=None),
        overwrite=force,
    )
    typer.echo(f"intermediate CA written: {out_cert} (serial {child.certificate.serial_number:x})")


@app.command("gen-cert")
def gen_cert(
    *,
    ca_cert: CaCert,
    ca_key: CaKey,
    out_cert: OutCert,
    out_key: OutKey,
    common_name: CommonName,
    role: RoleOpt = "worker",
    server: Server = None,
    client: Client = None,
    dns: Dns = None,
    ip: Ip = None,
    days: LeafDays = 90,
    organization: Org = None,
    ca_passphrase_file: CaPass = None,
    force: Force = False,
) -> None:
    """Issue a node certificate and a new Ed25519 key for a role.

    Example:
      cyxwiz certutil gen-cert --ca-cert intermediate-ca-cert.pem --ca-key intermediate-ca-key.pem
        --out-cert gateway-01-cert.pem --out-key gateway-01-key.pem --common-name gateway-01.hypha.local
        --role gateway --ip 10.0.0.5 --days 90
    """
    from cyxwiz.pki.certs import write_certificate
    from cyxwiz.pki.keys import write_private_key
    from cyxwiz.pki.peerid import peer_id

    _node_key_file(out_key, flag="out_key")
    ca = _load_ca(ca_cert, ca_key, ca_passphrase_file)
    use_server = _default_server(role) if server is None else server
    for path in (out_cert, out_key):
        if path.exists() and not force:
            raise ValidationError(
                "refusing to overwrite an existing file", path=str(path), hint="pass --force"
            )
    issued = ca.issue(
        common_name=common_name,
        role=role,
        server=use_server,
        client=True if client is None else client,
        dns_names=_leaf_sans(common_name, dns or [], use_server),
        ip_addresses=ip or [],
        days=days,
        organization=organization,
    )
    assert issued.private_key is not None
    write_private_key(out_key, issued.private_key, overwrite=force)
    write_certificate(out_cert, issued.certificate, overwrite=force)
    typer.echo(f"certificate written: {out_cert} (key {out_key}, peer id {peer_id(issued.certificate)})")


@app.command("gen-csr")
def gen_csr(
    *,
    out_csr: Annotated[Path, typer.Option("--out-csr", "--out", help="Where to write the CSR (PEM).")],
    common_name: CommonName,
    out_key: Annotated[
        Path | None, typer.Option("--out-key", help="Generate a new key and write it here (0600).")
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Use this existing key instead (PKCS#8, 0600).")
    ] = None,
    dns: Dns = None,
    ip: Ip = None,
    force: Force = False,
) -> None:
    """Create a certificate signing request on the node: the private key never leaves it.

    Example:
      cyxwiz certutil gen-csr --out-key worker-01-key.pem --out-csr worker-01.csr --common-name worker-01
    """
    from cyxwiz.pki._files import PUBLIC_MODE, write_atomic
    from cyxwiz.pki.ca import create_csr
    from cyxwiz.pki.keys import generate_ed25519, load_private_key, write_private_key

    if (out_key is None) == (key is None):
        raise ValidationError("give exactly one of --out-key (new key) or --key (existing key)", field="key")
    _node_key_file(out_key, flag="out_key")
    _node_key_file(key, flag="key")
    if out_csr.exists() and not force:
        raise ValidationError(
            "refusing to overwrite an existing file", path=str(out_csr), hint="pass --force"
        )
    private = load_private_key(key) if key is not None else generate_ed25519()
    csr = create_csr(private, common_name=common_name, dns_names=dns or [], ip_addresses=ip or [])
    if out_key is not None:
        write_private_key(out_key, private, overwrite=force)
    write_atomic(out_csr, csr.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE, overwrite=force)
    typer.echo(f"CSR written: {out_csr}")


@app.command("sign-csr")
def sign_csr(
    *,
    csr: Annotated[Path, typer.Argument(help="The CSR file (PEM).")],
    ca_cert: CaCert,
    ca_key: CaKey,
    out_cert: OutCert,
    role: RoleOpt = "worker",
    server: Server = None,
    client: Client = None,
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="Replace the CSR's DNS SANs (repeatable).")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="Replace the CSR's IP SANs (repeatable).")
    ] = None,
    days: LeafDays = 90,
    ca_passphrase_file: CaPass = None,
    force: Force = False,
) -> None:
    """Sign a CSR with a CA. Only the CSR's name and SANs are used; requested extensions are ignored.

    Example:
      cyxwiz certutil sign-csr worker-01.csr --ca-cert intermediate-ca-cert.pem
        --ca-key intermediate-ca-key.pem --out-cert worker-01-cert.pem --role worker
    """
    from cryptography import x509

    from cyxwiz.pki._files import read_bytes
    from cyxwiz.pki.certs import write_certificate

    try:
        request = x509.load_pem_x509_csr(read_bytes(csr, what="CSR"))
    except ValueError:
        raise PKIError("not a PEM certificate signing request", path=str(csr), rule="A1") from None
    ca = _load_ca(ca_cert, ca_key, ca_passphrase_file)
    use_server = _default_server(role) if server is None else server
    try:
        cert = ca.sign_csr(
            request,
            role=role,
            server=use_server,
            client=True if client is None else client,
            dns_names=dns or None,
            ip_addresses=ip or None,
            days=days,
        )
    except CyxwizError as exc:
        exc.path = exc.path or str(csr)
        raise
    write_certificate(out_cert, cert, overwrite=force)
    typer.echo(f"certificate written: {out_cert} (serial {cert.serial_number:x})")


@app.command("bundle")
def bundle(
    *,
    certs: Annotated[list[Path], typer.Argument(help="CA certificates: intermediates first, then roots.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write (PEM, 0644).")],
    force: Force = False,
) -> None:
    """Concatenate CA certificates into a trust bundle; refuses leaves and non-Ed25519 CAs.

    Example:
      cyxwiz certutil bundle intermediate-ca-cert.pem root-ca-cert.pem --out ca-bundle.pem
    """
    from cyxwiz.errors import CertificateUsageError
    from cyxwiz.pki.certs import is_ca, load_certificates, write_certificates
    from cyxwiz.pki.keys import require_ed25519_public

    collected = []
    for path in certs:
        for cert in load_certificates(path):
            require_ed25519_public(cert.public_key(), path=str(path))
            if not is_ca(cert):
                raise CertificateUsageError("not a CA certificate: a bundle holds CAs only", path=str(path))
            if cert not in collected:
                collected.append(cert)
    write_certificates(out, collected, overwrite=force)
    typer.echo(f"bundle written: {out} ({len(collected)} CA certificates)")


# The revocation and inspection commands live in a sibling module (size); importing it registers them.
from cyxwiz.pki import cli_more  # noqa: E402

__all__ = ["app", "cli_more"]
