"""verify_certificate attacked: every rule of A2/A3/A6/A7 has a certificate built to break it.

``openssl verify`` is asked the same question where it has an opinion, so our answer is never only ours.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cyxwiz.errors import (
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    CertificateUsageError,
    ChainError,
    CRLError,
    KeyTypeError,
    SelfSignedCertificateError,
)
from cyxwiz.pki import profiles
from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.certs import certificates_pem
from cyxwiz.pki.keys import generate_ed25519
from cyxwiz.pki.verify import verify_certificate
from tests.pki.conftest import Hierarchy, make_hierarchy, rsa_leaf_signed_by, self_signed_leaf

NOW = dt.datetime.now(dt.UTC)


def _openssl_verify(tmp: Path, leaf: x509.Certificate, trusted: list[x509.Certificate], *extra: str) -> str:
    (tmp / "ossl-bundle.pem").write_bytes(certificates_pem(trusted))
    (tmp / "ossl-leaf.pem").write_bytes(certificates_pem([leaf]))
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp / "ossl-bundle.pem"), *extra, str(tmp / "ossl-leaf.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout + out.stderr


def _node(ca: CertificateAuthority, **kw: object) -> x509.Certificate:
    args: dict[str, object] = {"common_name": "node-1", "role": "worker", "client": True}
    args.update(kw)
    return ca.issue(**args).certificate  # type: ignore[arg-type]


def test_good_chain_returns_leaf_to_root(hierarchy: Hierarchy, tmp_path: Path) -> None:
    leaf = _node(hierarchy.intermediate)
    chain = verify_certificate(leaf, trusted=hierarchy.bundle, purpose="client")
    assert chain == [leaf, hierarchy.intermediate.certificate, hierarchy.root.certificate]
    assert ": OK" in _openssl_verify(tmp_path, leaf, hierarchy.bundle)


def test_intermediate_may_come_from_the_presented_chain(hierarchy: Hierarchy) -> None:
    leaf = _node(hierarchy.intermediate)
    chain = verify_certificate(
        leaf, trusted=[hierarchy.root.certificate], intermediates=[hierarchy.intermediate.certificate]
    )
    assert len(chain) == 3
    with pytest.raises(ChainError, match="not in the trust bundle"):
        verify_certificate(leaf, trusted=[hierarchy.root.certificate])


def test_self_signed_leaf_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    cert, _ = self_signed_leaf()
    # Even when an operator puts it into the bundle, a self-signed leaf is never accepted (A3).
    with pytest.raises(SelfSignedCertificateError, match="self-signed leaf certificate 'CN=rogue-node'"):
        verify_certificate(cert, trusted=[*hierarchy.bundle, cert])
    assert "self-signed" in _openssl_verify(tmp_path, cert, hierarchy.bundle)


def test_ca_certificate_used_as_leaf_refused(hierarchy: Hierarchy) -> None:
    with pytest.raises(CertificateUsageError, match="used as a leaf"):
        verify_certificate(hierarchy.intermediate.certificate, trusted=hierarchy.bundle)
    with pytest.raises(CertificateUsageError, match="used as a leaf"):
        verify_certificate(hierarchy.root.certificate, trusted=hierarchy.bundle)


def test_expired_and_not_yet_valid_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    expired = _node(hierarchy.intermediate, days=1, not_before=NOW - dt.timedelta(days=10))
    with pytest.raises(CertificateExpiredError, match="expired at"):
        verify_certificate(expired, trusted=hierarchy.bundle)
    assert "certificate has expired" in _openssl_verify(tmp_path, expired, hierarchy.bundle)
    future = _node(hierarchy.intermediate, days=30, not_before=NOW + dt.timedelta(days=2))
    with pytest.raises(CertificateNotYetValidError, match="not valid before"):
        verify_certificate(future, trusted=hierarchy.bundle)
    good = _node(hierarchy.intermediate)
    with pytest.raises(CertificateExpiredError):
        verify_certificate(good, trusted=hierarchy.bundle, at=NOW + dt.timedelta(days=400))


def test_expired_intermediate_breaks_the_chain(tmp_path: Path) -> None:
    h = make_hierarchy(tmp_path / "o")
    stale = h.root.sign_ca(
        h.intermediate.private_key.public_key(),
        subject=h.intermediate.certificate.subject,
        days=1,
    )
    leaf = _node(h.intermediate)
    with pytest.raises(CertificateExpiredError, match="Intermediate"):
        verify_certificate(leaf, trusted=[stale, h.root.certificate], at=NOW + dt.timedelta(days=3))


def test_wrong_ca_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    other = make_hierarchy(tmp_path / "other", name="Other")
    leaf = _node(other.intermediate)
    with pytest.raises(ChainError, match="not in the trust bundle"):
        verify_certificate(leaf, trusted=hierarchy.bundle)


def test_same_name_different_key_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    """An impostor CA copying our intermediate's name cannot issue: the signature check finds it out."""
    impostor = make_hierarchy(tmp_path / "imp", name="Org")
    leaf = _node(impostor.intermediate)
    with pytest.raises(ChainError, match="does not verify"):
        verify_certificate(leaf, trusted=hierarchy.bundle)
    assert ": OK" not in _openssl_verify(tmp_path, leaf, hierarchy.bundle)


def test_tampered_certificate_refused(hierarchy: Hierarchy) -> None:
    leaf = _node(hierarchy.intermediate)
    der = bytearray(leaf.public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0x01  # inside the signature
    with pytest.raises(ChainError, match="does not verify"):
        verify_certificate(x509.load_der_x509_certificate(bytes(der)), trusted=hierarchy.bundle)


def test_rsa_leaf_refused_even_with_a_valid_ca_signature(hierarchy: Hierarchy, tmp_path: Path) -> None:
    cert, _ = rsa_leaf_signed_by(hierarchy.intermediate)
    # OpenSSL checks only the chain's signatures, so it says OK: the key-type rule is ours (A2).
    assert ": OK" in _openssl_verify(tmp_path, cert, hierarchy.bundle)
    with pytest.raises(KeyTypeError, match="RSA key refused: only Ed25519"):
        verify_certificate(cert, trusted=hierarchy.bundle)


def test_leaf_cannot_act_as_issuer(hierarchy: Hierarchy, tmp_path: Path) -> None:
    issued = hierarchy.intermediate.issue(common_name="evil", role="worker")
    assert issued.private_key is not None
    evil_leaf = issued.certificate
    grandchild = profiles.leaf_builder(
        subject=profiles.name("victim"),
        issuer=evil_leaf,
        public_key=generate_ed25519().public_key(),
        role=profiles.parse_role("worker"),
        server=False,
        client=True,
        dns_names=(),
        ip_addresses=(),
        days=10,
    ).sign(issued.private_key, None)
    with pytest.raises(CertificateUsageError, match="is not a CA"):
        verify_certificate(grandchild, trusted=hierarchy.bundle, intermediates=[evil_leaf])
    assert ": OK" not in _openssl_verify(tmp_path, grandchild, [*hierarchy.bundle, evil_leaf])


def test_path_length_constraint_enforced(hierarchy: Hierarchy, tmp_path: Path) -> None:
    # The intermediate has pathlen 0: a sub-CA it signs must not be able to issue.
    sub = hierarchy.intermediate.create_intermediate(
        cert_path=tmp_path / "sub-cert.pem", key_path=tmp_path / "sub-key.pem", common_name="Sub CA"
    )
    leaf = _node(sub)
    with pytest.raises(ChainError, match="path length constraint"):
        verify_certificate(leaf, trusted=hierarchy.bundle, intermediates=[sub.certificate])
    assert "path length constraint exceeded" in _openssl_verify(
        tmp_path, leaf, [*hierarchy.bundle, sub.certificate]
    )


def test_issuer_without_key_cert_sign_refused(hierarchy: Hierarchy) -> None:
    key = generate_ed25519()
    builder = profiles.ca_builder(
        subject=profiles.name("No-Sign CA"),
        issuer=hierarchy.root.certificate.subject,
        public_key=key.public_key(),
        issuer_public_key=hierarchy.root.private_key.public_key(),
        days=30,
        path_length=0,
    )
    # Replace the key usage with one lacking keyCertSign.
    ext = [e for e in builder._extensions if not isinstance(e.value, x509.KeyUsage)]
    builder._extensions = ext
    usage = x509.KeyUsage(True, False, False, False, False, False, True, False, False)
    ca_cert = builder.add_extension(usage, critical=True).sign(hierarchy.root.private_key, None)
    fake = CertificateAuthority.__new__(CertificateAuthority)
    fake.certificate, fake.private_key = ca_cert, key
    leaf = CertificateAuthority.issue(fake, common_name="n", role="worker").certificate
    with pytest.raises(CertificateUsageError, match="keyCertSign"):
        verify_certificate(leaf, trusted=[ca_cert, hierarchy.root.certificate])


def test_purpose_checks_eku(hierarchy: Hierarchy) -> None:
    client_only = _node(hierarchy.intermediate)
    verify_certificate(client_only, trusted=hierarchy.bundle, purpose="client")
    with pytest.raises(CertificateUsageError, match="not valid for TLS server use"):
        verify_certificate(client_only, trusted=hierarchy.bundle, purpose="server")


# --- revocation (A6) -------------------------------------------------------------------------------


def test_revoked_leaf_refused_and_others_not(hierarchy: Hierarchy) -> None:
    bad, good = _node(hierarchy.intermediate), _node(hierarchy.intermediate)
    hierarchy.intermediate.revoke(bad, reason="keyCompromise")
    crl = hierarchy.intermediate.generate_crl()
    with pytest.raises(CertificateRevokedError, match="reason: keyCompromise"):
        verify_certificate(bad, trusted=hierarchy.bundle, crls=[crl])
    verify_certificate(good, trusted=hierarchy.bundle, crls=[crl])


def test_revoked_intermediate_refused(hierarchy: Hierarchy) -> None:
    leaf = _node(hierarchy.intermediate)
    hierarchy.root.revoke(hierarchy.intermediate.certificate, reason="cACompromise")
    crls = [hierarchy.intermediate.generate_crl(), hierarchy.root.generate_crl()]
    with pytest.raises(CertificateRevokedError, match="Intermediate"):
        verify_certificate(leaf, trusted=hierarchy.bundle, crls=crls)


def test_stale_crl_fails_closed(hierarchy: Hierarchy) -> None:
    leaf = _node(hierarchy.intermediate)
    crl = hierarchy.intermediate.generate_crl(days=1, now=NOW - dt.timedelta(days=3))
    with pytest.raises(CRLError, match="past its nextUpdate"):
        verify_certificate(leaf, trusted=hierarchy.bundle, crls=[crl])


def test_forged_crl_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    """A CRL with our CA's name signed by another key (e.g. to un-revoke someone) is refused."""
    impostor = make_hierarchy(tmp_path / "imp", name="Org")
    forged = impostor.intermediate.generate_crl()
    assert forged.issuer == hierarchy.intermediate.certificate.subject
    with pytest.raises(CRLError, match="not signed by its CA"):
        verify_certificate(_node(hierarchy.intermediate), trusted=hierarchy.bundle, crls=[forged])


def test_missing_crl_for_the_issuer_is_an_error_once_crls_are_used(hierarchy: Hierarchy) -> None:
    leaf = _node(hierarchy.intermediate)
    with pytest.raises(CRLError, match="no CRL from issuer"):
        verify_certificate(leaf, trusted=hierarchy.bundle, crls=[hierarchy.root.generate_crl()])


# --- federation (A7) ------------------------------------------------------------------------------


def test_multi_root_bundle(tmp_path: Path) -> None:
    a, b = make_hierarchy(tmp_path / "a", "A"), make_hierarchy(tmp_path / "b", "B")
    federated = [*a.bundle, *b.bundle]
    for h in (a, b):
        leaf = _node(h.intermediate)
        assert verify_certificate(leaf, trusted=federated)[-1] == h.root.certificate
        assert ": OK" in _openssl_verify(tmp_path, leaf, federated)
    with pytest.raises(ChainError):
        verify_certificate(_node(b.intermediate), trusted=a.bundle)


def test_cross_signed_intermediate(tmp_path: Path) -> None:
    """Org A's root cross-signs org B's intermediate: B's nodes verify against A's root alone."""
    a, b = make_hierarchy(tmp_path / "a", "A"), make_hierarchy(tmp_path / "b", "B")
    cross = a.root.cross_sign(b.intermediate.certificate)
    leaf = _node(b.intermediate)
    chain = verify_certificate(leaf, trusted=[a.root.certificate], intermediates=[cross])
    assert chain == [leaf, cross, a.root.certificate]
    # B's own path still works, and with both versions around the DFS finds a working one.
    verify_certificate(leaf, trusted=b.bundle)
    verify_certificate(leaf, trusted=[a.root.certificate], intermediates=[b.intermediate.certificate, cross])
    (tmp_path / "untrusted.pem").write_bytes(certificates_pem([cross]))
    out = _openssl_verify(tmp_path, leaf, [a.root.certificate], "-untrusted", str(tmp_path / "untrusted.pem"))
    assert ": OK" in out
