"""A complete development PKI in one call (SPEC A1, A3): ``make demo`` and the tests use it.

Even in development nothing is self-signed at the leaf (A3): a dev root CA signs an issuing intermediate,
which signs the gateway, coordinator, verifier, user and worker-node certificates. The call is idempotent:
what exists and is still good (loads, key matches, chains to the current CA, more than a day left) is
kept; anything missing or broken is (re)made. Revocations recorded in the CA directory persist across
calls, so a node revoked by a test stays revoked.

Layout under ``root``::

    root-ca/ca-cert.pem, ca-key.pem          dev root CA
    ca/ca-cert.pem, ca-key.pem, ca-crl.pem   issuing intermediate CA, its CRL and revocation db
    bundle.pem                               trust bundle (intermediate + root)
    certs/<role>-cert.pem, <role>-key.pem    gateway, coordinator, verifier, user
    nodes/<name>-cert.pem, <name>-key.pem    worker nodes
"""

from __future__ import annotations

import datetime as dt
import fcntl
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from cyxwiz.errors import CyxwizError, ValidationError
from cyxwiz.pki._files import PUBLIC_MODE, write_atomic
from cyxwiz.pki.ca import CertificateAuthority, Revocation
from cyxwiz.pki.ca_keys import key_reference, write_key_reference
from cyxwiz.pki.certs import Role, certificates_pem, load_certificate, load_crls, write_certificate
from cyxwiz.pki.keys import write_private_key

_NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: Re-issue anything with less than this left, so a long test run never meets an expiry.
_MIN_REMAINING = dt.timedelta(days=1)
#: Lifetime of a dev node certificate (re-issued with under ``_MIN_REMAINING`` left; renewed by the agent).
NODE_DAYS = 2
_SERVER_SANS = {"dns_names": ("localhost",), "ip_addresses": ("127.0.0.1", "::1")}


def _check_node_name(name: str) -> str:
    if not _NODE_NAME.match(name):
        raise ValidationError(
            f"node name {name!r} must be lowercase letters, digits and '-' (max 63)", field="nodes"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class DevPKI:
    """Paths of a development PKI built by :func:`build_dev_pki`."""

    root: Path
    root_ca_cert: Path
    root_ca_key: Path
    ca_dir: Path
    ca_cert: Path
    ca_key: Path
    bundle: Path
    crl: Path
    gateway_cert: Path
    gateway_key: Path
    coordinator_cert: Path
    coordinator_key: Path
    verifier_cert: Path
    verifier_key: Path
    user_cert: Path
    user_key: Path
    nodes: tuple[str, ...] = field(default=())

    def node_cert(self, name: str) -> Path:
        return self.root / "nodes" / f"{_check_node_name(name)}-cert.pem"

    def node_key(self, name: str) -> Path:
        return self.root / "nodes" / f"{_check_node_name(name)}-key.pem"

    def issuing_ca(self) -> CertificateAuthority:
        return CertificateAuthority.from_dir(self.ca_dir)

    def revoke(self, cert_path: Path, *, reason: str = "keyCompromise") -> Revocation:
        """Revoke a certificate of this PKI and publish the new CRL at :attr:`crl` at once."""
        ca = self.issuing_ca()
        entry = ca.revoke(load_certificate(cert_path), reason=reason)
        ca.generate_crl()
        return entry


def _layout(root: Path, nodes: Sequence[str]) -> DevPKI:
    certs = root / "certs"
    return DevPKI(
        root=root,
        root_ca_cert=root / "root-ca" / "ca-cert.pem",
        root_ca_key=root / "root-ca" / "ca-key.pem",
        ca_dir=root / "ca",
        ca_cert=root / "ca" / "ca-cert.pem",
        ca_key=root / "ca" / "ca-key.pem",
        bundle=root / "bundle.pem",
        crl=root / "ca" / "ca-crl.pem",
        gateway_cert=certs / "gateway-cert.pem",
        gateway_key=certs / "gateway-key.pem",
        coordinator_cert=certs / "coordinator-cert.pem",
        coordinator_key=certs / "coordinator-key.pem",
        verifier_cert=certs / "verifier-cert.pem",
        verifier_key=certs / "verifier-key.pem",
        user_cert=certs / "user-cert.pem",
        user_key=certs / "user-key.pem",
        nodes=tuple(nodes),
    )


def _good(cert_path: Path, key_path: Path | str, issuer: x509.Certificate | None, now: dt.datetime) -> bool:
    """True when the pair exists, belongs together, chains to ``issuer`` (itself when None), has time left.

    ``key_path`` may be a ``pkcs11:`` URI (a CA key kept in a token)."""
    from cyxwiz.keys import open_key_source

    try:
        cert = load_certificate(cert_path)
        public = open_key_source(key_path).public_key
        cert.verify_directly_issued_by(issuer or cert)
    except Exception:  # missing, corrupt, wrong mode, other issuer: all mean "make it again"
        return False
    return cert.public_key() == public and cert.not_valid_after_utc - now > _MIN_REMAINING


def _load_ca(
    cert: Path, key: Path | str, issuer: x509.Certificate | None, now: dt.datetime
) -> CertificateAuthority | None:
    if not _good(cert, key, issuer, now):
        return None
    return CertificateAuthority.from_files(cert, key)


def _ensure_leaf(
    ca: CertificateAuthority,
    cert_path: Path,
    key_path: Path,
    now: dt.datetime,
    **issue_args: object,
) -> None:
    if _good(cert_path, key_path, ca.certificate, now):
        return
    issued = ca.issue(**issue_args)  # type: ignore[arg-type]
    assert issued.private_key is not None
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_private_key(key_path, issued.private_key, overwrite=True)
    write_certificate(cert_path, issued.certificate, overwrite=True)


def _crl_fresh(ca: CertificateAuthority, now: dt.datetime) -> bool:
    try:
        crls = load_crls(ca.crl_path)
    except CyxwizError:
        return False
    crl = crls[0]
    return (
        crl.issuer == ca.certificate.subject
        and crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
        and crl.next_update_utc is not None
        and crl.next_update_utc - now > _MIN_REMAINING
    )


def build_dev_pki(
    root: Path, *, nodes: Sequence[str] = ("node-1",), ca_keys: Mapping[str, str] | None = None
) -> DevPKI:
    """Create (or complete) the dev PKI under ``root`` and return its paths. Idempotent, < 1 s.

    ``ca_keys`` (``{"root": uri, "issuing": uri}``) keeps the two CA keys in a PKCS#11 token instead of
    files (``demo --hsm``): each CA directory then holds ``ca-key.uri`` in place of ``ca-key.pem``."""
    root = Path(root)
    names = tuple(_check_node_name(n) for n in nodes)
    pki = _layout(root, names)
    for directory in (root, root / "root-ca", pki.ca_dir, root / "certs", root / "nodes"):
        directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    # One builder at a time: parallel test processes may share a PKI directory.
    with open(root / ".devpki.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        root_key = (ca_keys or {}).get("root") or key_reference(pki.root_ca_cert.parent)
        issuing_key = (ca_keys or {}).get("issuing") or key_reference(pki.ca_dir)
        root_ca = _load_ca(pki.root_ca_cert, root_key, None, now)
        if root_ca is None:
            root_ca = CertificateAuthority.create_root(
                cert_path=pki.root_ca_cert,
                key_path=root_key,
                common_name="cyxwiz dev root CA",
                organization="cyxwiz development",
                path_length=1,
                overwrite=True,
            )
        issuing = _load_ca(pki.ca_cert, issuing_key, root_ca.certificate, now)
        if issuing is None:
            issuing = root_ca.create_intermediate(
                cert_path=pki.ca_cert,
                key_path=issuing_key,
                common_name="cyxwiz dev issuing CA",
                organization="cyxwiz development",
                overwrite=True,
            )
        for directory, key in ((pki.root_ca_cert.parent, root_key), (pki.ca_dir, issuing_key)):
            if isinstance(key, str):
                write_key_reference(directory, key)
        bundle = certificates_pem([issuing.certificate, root_ca.certificate])
        if not pki.bundle.exists() or pki.bundle.read_bytes() != bundle:
            write_atomic(pki.bundle, bundle, mode=PUBLIC_MODE, overwrite=True)
        if not _crl_fresh(issuing, now):
            issuing.generate_crl(days=30)
        if not _crl_fresh(root_ca, now):
            root_ca.generate_crl(days=30)
        leaves: list[tuple[Path, Path, dict[str, object]]] = [
            (
                pki.gateway_cert,
                pki.gateway_key,
                {
                    "common_name": "gateway",
                    "role": Role.GATEWAY,
                    "server": True,
                    "client": True,
                    **_SERVER_SANS,
                },
            ),
            (
                pki.coordinator_cert,
                pki.coordinator_key,
                {
                    "common_name": "coordinator",
                    "role": Role.COORDINATOR,
                    "server": True,
                    "client": True,
                    **_SERVER_SANS,
                },
            ),
            (
                pki.verifier_cert,
                pki.verifier_key,
                {"common_name": "verifier", "role": Role.VERIFIER, "client": True},
            ),
            (pki.user_cert, pki.user_key, {"common_name": "demo-user", "role": Role.USER, "client": True}),
        ]
        for cert_path, key_path, args in leaves:
            _ensure_leaf(issuing, cert_path, key_path, now, days=90, **args)
        # Node certificates are short-lived here as in production (A7): this one only bootstraps the
        # node, whose agent renews it at half-life over its mTLS identity into the coordinator's 24 h ones.
        for n in names:
            args = {"common_name": n, "role": Role.WORKER, "client": True}
            _ensure_leaf(issuing, pki.node_cert(n), pki.node_key(n), now, days=NODE_DAYS, **args)
        fcntl.flock(lock, fcntl.LOCK_UN)
    return pki
