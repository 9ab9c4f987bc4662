"""Fixtures for the PKI tests: a dev PKI built once per session, copied per test that mutates it."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import generate_ed25519


@pytest.fixture(scope="session")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """Read-only dev PKI shared by tests that do not revoke or rewrite anything."""
    return build_dev_pki(tmp_path_factory.mktemp("shared-pki"), nodes=("node-1", "node-2"))


@pytest.fixture
def dev_pki(tmp_path: Path, shared_pki: DevPKI) -> DevPKI:
    """A private copy (cheap) for tests that revoke or tamper."""
    root = tmp_path / "pki"
    shutil.copytree(shared_pki.root, root)
    return build_dev_pki(root, nodes=shared_pki.nodes)


@dataclass(frozen=True)
class Hierarchy:
    """root → intermediate, created through the library in a temp dir."""

    root: CertificateAuthority
    intermediate: CertificateAuthority
    dir: Path

    @property
    def bundle(self) -> list[x509.Certificate]:
        return [self.intermediate.certificate, self.root.certificate]


def make_hierarchy(directory: Path, name: str = "Org") -> Hierarchy:
    directory.mkdir(parents=True, exist_ok=True)
    root = CertificateAuthority.create_root(
        cert_path=directory / "root-ca-cert.pem",
        key_path=directory / "root-ca-key.pem",
        common_name=f"{name} Root CA",
    )
    inter = root.create_intermediate(
        cert_path=directory / "intermediate-ca-cert.pem",
        key_path=directory / "intermediate-ca-key.pem",
        common_name=f"{name} Intermediate CA",
    )
    return Hierarchy(root=root, intermediate=inter, dir=directory)


@pytest.fixture
def hierarchy(tmp_path: Path) -> Hierarchy:
    return make_hierarchy(tmp_path / "org")


def self_signed_leaf(common_name: str = "rogue-node") -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """What an attacker presents without a CA: a self-signed, non-CA Ed25519 leaf with client+server EKU."""
    key = generate_ed25519()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, None)
    )
    return cert, key


def rsa_leaf_signed_by(ca: CertificateAuthority) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An RSA-key client cert with a valid signature of our (Ed25519) CA: OpenSSL alone accepts it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa-node")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.private_key, None)
    )
    return cert, key


# SoftHSM2 token fixtures (tests/_softhsm.py) for CA keys held in PKCS#11 (A7).
from tests._softhsm import softhsm, softhsm_session  # noqa: E402

__all__ = ["softhsm", "softhsm_session"]
