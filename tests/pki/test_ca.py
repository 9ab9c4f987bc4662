"""CertificateAuthority: issuing profiles, CSR signing, revocation database, CRLs (A1, A3, A4, A6)."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from cyxwiz.errors import CertificateError, ConflictError, KeyFormatError, ValidationError
from cyxwiz.pki.ca import CertificateAuthority, create_csr, parse_reason
from cyxwiz.pki.certs import Role, load_crls, role_of, x5t_s256
from cyxwiz.pki.keys import generate_ed25519
from cyxwiz.pki.verify import verify_certificate
from tests.pki.conftest import Hierarchy, make_hierarchy


def test_leaf_profile(hierarchy: Hierarchy) -> None:
    cert = hierarchy.intermediate.issue(
        common_name="gw",
        role="gateway",
        server=True,
        client=True,
        dns_names=["gw.local"],
        ip_addresses=["127.0.0.1"],
        days=90,
    ).certificate
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.local"]
    assert role_of(cert) is Role.GATEWAY
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=90, minutes=10)
    assert len(x5t_s256(cert)) == 43


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"role": "admin"}, "role"),
        ({"days": 366}, "days"),
        ({"days": 0}, "days"),
        ({"server": False, "client": False}, "usage"),
        ({"dns_names": ["bad name"]}, "dns"),
        ({"dns_names": ["a..b"]}, "dns"),
        ({"ip_addresses": ["999.1.1.1"]}, "ip"),
        ({"common_name": ""}, "common_name"),
    ],
)
def test_bad_issue_requests_refused(hierarchy: Hierarchy, kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"common_name": "n", "role": "worker"}
    args.update(kwargs)
    with pytest.raises(ValidationError) as err:
        hierarchy.intermediate.issue(**args)  # type: ignore[arg-type]
    assert err.value.field == field


def test_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    root = CertificateAuthority.create_root(
        cert_path=tmp_path / "r.pem", key_path=tmp_path / "r-key.pem", common_name="Short Root", days=10
    )
    leaf = root.issue(common_name="n", role="worker", days=90).certificate
    assert leaf.not_valid_after_utc <= root.certificate.not_valid_after_utc


def test_csr_flow_ignores_requested_extensions(hierarchy: Hierarchy) -> None:
    """A node asking for CA:TRUE in its CSR still gets a leaf: the CA decides what a cert may do."""
    key = generate_ed25519()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sneaky")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("sneaky.local")]), critical=False)
        .sign(key, None)
    )
    cert = hierarchy.intermediate.sign_csr(csr, role="worker")
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key() == key.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sneaky.local"]
    verify_certificate(cert, trusted=hierarchy.bundle)


def test_csr_with_broken_signature_refused(hierarchy: Hierarchy) -> None:
    csr = create_csr(generate_ed25519(), common_name="node-1")
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    with pytest.raises(CertificateError, match="CSR signature does not verify"):
        hierarchy.intermediate.sign_csr(x509.load_der_x509_csr(bytes(der)), role="worker")


def test_revocation_database_and_crl(hierarchy: Hierarchy) -> None:
    ca = hierarchy.intermediate
    victim = ca.issue(common_name="n", role="worker").certificate
    entry = ca.revoke(victim, reason="key-compromise")
    assert entry.reason is x509.ReasonFlags.key_compromise
    with pytest.raises(ConflictError, match="already revoked"):
        ca.revoke(victim.serial_number)
    db = json.loads(ca.db_path.read_text())
    assert db["revoked"][0]["serial"] == f"{victim.serial_number:x}"
    first = ca.generate_crl(days=7)
    second = ca.generate_crl(days=7)
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in (first, second)]
    assert numbers[1] == numbers[0] + 1
    assert second.next_update_utc is not None
    assert dt.timedelta(days=6) < second.next_update_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(days=7)
    on_disk = load_crls(ca.crl_path)[0]
    assert on_disk.get_revoked_certificate_by_serial_number(victim.serial_number) is not None
    assert stat.S_IMODE(ca.crl_path.stat().st_mode) == 0o644


def test_revoking_a_foreign_certificate_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    other = make_hierarchy(tmp_path / "o", "Other")
    foreign = other.intermediate.issue(common_name="n", role="worker").certificate
    with pytest.raises(CertificateError, match="not issued by this CA"):
        hierarchy.intermediate.revoke(foreign)


def test_reason_names() -> None:
    assert parse_reason("keyCompromise") is x509.ReasonFlags.key_compromise
    assert parse_reason("CESSATION_OF_OPERATION") is x509.ReasonFlags.cessation_of_operation
    with pytest.raises(ValidationError, match="unknown revocation reason"):
        parse_reason("because")


def test_ca_key_and_cert_must_match(tmp_path: Path) -> None:
    a = make_hierarchy(tmp_path / "a", "A")
    b = make_hierarchy(tmp_path / "b", "B")
    with pytest.raises(CertificateError, match="do not belong together"):
        CertificateAuthority.from_files(a.root.cert_path, b.root.key_path)


def test_leaf_cannot_be_loaded_as_ca(hierarchy: Hierarchy, tmp_path: Path) -> None:
    from cyxwiz.pki.certs import write_certificate
    from cyxwiz.pki.keys import write_private_key

    issued = hierarchy.intermediate.issue(common_name="n", role="worker")
    assert issued.private_key is not None
    write_certificate(tmp_path / "leaf.pem", issued.certificate)
    write_private_key(tmp_path / "leaf-key.pem", issued.private_key)
    with pytest.raises(CertificateError, match="not a CA certificate"):
        CertificateAuthority.from_files(tmp_path / "leaf.pem", tmp_path / "leaf-key.pem")


def test_encrypted_ca_key(tmp_path: Path) -> None:
    CertificateAuthority.create_root(
        cert_path=tmp_path / "ca-cert.pem",
        key_path=tmp_path / "ca-key.pem",
        common_name="Enc Root",
        passphrase=b"s3cret",
    )
    with pytest.raises(KeyFormatError, match="no passphrase"):
        CertificateAuthority.from_dir(tmp_path)
    ca = CertificateAuthority.from_dir(tmp_path, passphrase=b"s3cret")
    assert ca.issue(common_name="n", role="worker").certificate.issuer == ca.certificate.subject


def test_create_root_refuses_to_clobber_and_leaves_nothing_half_made(tmp_path: Path) -> None:
    CertificateAuthority.create_root(
        cert_path=tmp_path / "c.pem", key_path=tmp_path / "k.pem", common_name="R"
    )
    before = (tmp_path / "k.pem").read_bytes()
    with pytest.raises(ConflictError):
        CertificateAuthority.create_root(
            cert_path=tmp_path / "c.pem", key_path=tmp_path / "k2.pem", common_name="R"
        )
    assert not (tmp_path / "k2.pem").exists()
    assert (tmp_path / "k.pem").read_bytes() == before
