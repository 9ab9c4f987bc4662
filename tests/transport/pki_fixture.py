"""A small, flexible test PKI (root → issuing CA → leaves) for transport, coordinator and gateway tests.

The project's dev PKI gives the happy path; attack tests need certificates the real CA refuses to make
(expired, self-signed, RSA, server-only EKU, wrong CA), so they are made here with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cyxwiz-test")]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _write_key(path: Path, key: PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _algo(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass
class CA:
    cert: x509.Certificate
    key: ed25519.Ed25519PrivateKey
    revoked: list[int] = field(default_factory=list)


@dataclass
class Leaf:
    cert_path: Path
    key_path: Path
    cert: x509.Certificate


class TestPKI:
    """Root CA + issuing CA in ``root``; bundle = issuing + root; one CRL file for the issuing CA."""

    __test__ = False  # not a pytest class

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(UTC)
        self.root_ca = self._make_ca("Test Root CA", None, now)
        self.issuing = self._make_ca("Test Issuing CA", self.root_ca, now)
        self.bundle = root / "bundle.pem"
        self.bundle.write_bytes(self._pem(self.issuing.cert) + self._pem(self.root_ca.cert))
        self.crl = root / "crl.pem"
        self.write_crl()
        self.server = self.leaf("gateway", role="gateway", server=True, client=True)

    @staticmethod
    def _pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def _make_ca(self, cn: str, parent: CA | None, now: dt.datetime) -> CA:
        key = ed25519.Ed25519PrivateKey.generate()
        issuer_name = parent.cert.subject if parent else _name(cn)
        signer = parent.key if parent else key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None if parent is None else 0), True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if parent is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), False
            )
        cert = builder.sign(signer, None)
        return CA(cert=cert, key=key)

    def leaf(
        self,
        name: str,
        *,
        role: str = "worker",
        server: bool = False,
        client: bool = True,
        days: float = 30,
        not_before_days: float = -1,
        key_type: str = "ed25519",
        ca: CA | None = None,
        self_signed: bool = False,
    ) -> Leaf:
        key: PrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if key_type == "rsa"
            else ed25519.Ed25519PrivateKey.generate()
        )
        issuer = ca or self.issuing
        now = dt.datetime.now(UTC)
        ekus = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"urn:cyxwiz:role:{role}")]
        if server:
            sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        subject = _name(name, role)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=not_before_days))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage(ekus), False)
            .add_extension(x509.SubjectAlternativeName(sans), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        signer: PrivateKey = key if self_signed else issuer.key
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
            )
        cert = builder.sign(signer, _algo(signer))  # type: ignore[arg-type]
        cert_path = self.root / f"{name}.crt"
        key_path = self.root / f"{name}.key"
        cert_path.write_bytes(self._pem(cert))
        _write_key(key_path, key)
        return Leaf(cert_path=cert_path, key_path=key_path, cert=cert)

    def other_ca(self, name: str = "Rogue CA") -> CA:
        return self._make_ca(name, None, dt.datetime.now(UTC))

    def crl_bytes(
        self,
        *,
        revoked: list[int] | None = None,
        next_update: dt.datetime | None = None,
        last_update: dt.datetime | None = None,
        extra_serials: int = 0,
    ) -> bytes:
        now = dt.datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing.cert.subject)
            .last_update(last_update or now - dt.timedelta(minutes=1))
            .next_update(next_update or now + dt.timedelta(days=7))
        )
        for serial in revoked if revoked is not None else self.issuing.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        for i in range(extra_serials):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(10**12 + i).revocation_date(now).build()
            )
        crl = builder.sign(self.issuing.key, None)
        return crl.public_bytes(serialization.Encoding.PEM)

    def write_crl(self, **kwargs: object) -> bytes:
        data = self.crl_bytes(**kwargs)  # type: ignore[arg-type]
        tmp = self.crl.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.crl)
        return data

    def revoke(self, leaf: Leaf) -> bytes:
        """Revoke ``leaf`` and rewrite the CRL file (what `certutil revoke` + `gen-crl` do)."""
        self.issuing.revoked.append(leaf.cert.serial_number)
        return self.write_crl()
