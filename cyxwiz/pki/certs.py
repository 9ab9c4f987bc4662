"""X.509 PEM certificates: loading, writing, fingerprints, roles (SPEC A1, A2, A4).

A certificate's role (gateway, coordinator, scheduler, worker, data, verifier, user) is recorded twice in
standard fields, so nothing needs custom extensions (A2): as the subject's organizationalUnitName and as a
SAN URI ``urn:cyxwiz:role:<role>``. :func:`role_of` reads it back.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Sequence
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cyxwiz.errors import CertificateError, CRLError
from cyxwiz.pki._files import PUBLIC_MODE, read_bytes, write_atomic

_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_CRL_BEGIN = b"-----BEGIN X509 CRL-----"
ROLE_URI_PREFIX = "urn:cyxwiz:role:"


class Role(StrEnum):
    """What a certificate is for (A1). Roles are informational for TLS; authz reads them."""

    GATEWAY = "gateway"
    COORDINATOR = "coordinator"
    SCHEDULER = "scheduler"
    WORKER = "worker"
    DATA = "data"
    VERIFIER = "verifier"
    USER = "user"


def parse_certificates(data: bytes, *, path: str | None = None) -> list[x509.Certificate]:
    """Every certificate in a PEM blob (at least one), refusing DER and garbage with a clear error."""
    if _CERT_BEGIN not in data:
        raise CertificateError(
            "no PEM certificate found (expected '-----BEGIN CERTIFICATE-----'; DER is not accepted)",
            path=path,
            rule="A2",
            hint="convert DER: openssl x509 -inform der -in cert.der -out cert.pem",
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"malformed PEM certificate: {exc}", path=path, rule="A2") from None


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """All certificates in a PEM file (a bundle, or a chain)."""
    return parse_certificates(read_bytes(path, what="certificate"), path=str(path))


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate of a PEM file (the leaf, when the file holds a chain)."""
    return load_certificates(path)[0]


def certificates_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def write_certificates(
    path: str | os.PathLike[str], certs: Sequence[x509.Certificate], *, overwrite: bool = False
) -> None:
    """Write one or more certificates as PEM, mode 0644, atomically (A4)."""
    if not certs:
        raise CertificateError("nothing to write", path=str(path))
    write_atomic(path, certificates_pem(certs), mode=PUBLIC_MODE, overwrite=overwrite)


def write_certificate(
    path: str | os.PathLike[str], cert: x509.Certificate, *, overwrite: bool = False
) -> None:
    write_certificates(path, [cert], overwrite=overwrite)


def load_crls(path: str | os.PathLike[str]) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file (a file may hold the CRLs of several CAs)."""
    data = read_bytes(path, what="CRL")
    if _CRL_BEGIN not in data:
        raise CRLError("no PEM CRL found (expected '-----BEGIN X509 CRL-----')", path=str(path), rule="A6")
    crls: list[x509.CertificateRevocationList] = []
    end = b"-----END X509 CRL-----"
    for chunk in data.split(end)[:-1]:
        start = chunk.find(_CRL_BEGIN)
        if start < 0:
            continue
        try:
            crls.append(x509.load_pem_x509_crl(chunk[start:] + end + b"\n"))
        except ValueError as exc:
            raise CRLError(f"malformed CRL: {exc}", path=str(path), rule="A6") from None
    return crls


def write_crl(path: str | os.PathLike[str], crl: x509.CertificateRevocationList) -> None:
    """CRLs are replaced in place (0644, atomic): readers see the old or the new one, never half."""
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE, overwrite=True)


def fingerprint_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 over the DER encoding (what ``openssl x509 -fingerprint -sha256`` prints)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def x5t_s256(cert: x509.Certificate) -> str:
    """RFC 8705 ``x5t#S256`` certificate thumbprint: base64url(SHA-256(DER)) without padding."""
    return base64.urlsafe_b64encode(fingerprint_sha256(cert)).rstrip(b"=").decode("ascii")


def common_name(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def role_of(cert: x509.Certificate) -> Role | None:
    """The role recorded in a certificate (SAN URI first, then the subject OU); None when absent."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(ROLE_URI_PREFIX):
                return Role(uri.removeprefix(ROLE_URI_PREFIX))
    except (x509.ExtensionNotFound, ValueError):
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        try:
            return Role(str(attr.value))
        except ValueError:
            continue
    return None


def is_self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def is_self_signed(cert: x509.Certificate) -> bool:
    """Issuer equals subject and the certificate's own key verifies its signature."""
    if not is_self_issued(cert):
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # wrong key type, bad signature: not self-signed
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))
