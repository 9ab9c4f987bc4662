"""CRL validation before a CRL is put on the wire (SPEC A6)."""

from __future__ import annotations

import datetime as dt

import pytest

from cyxwiz.errors import CRLError
from cyxwiz.transport.crl import load_trusted_cas, parse_crl
from tests.transport.pki_fixture import TestPKI


def test_revoked_set_and_next_update(pki: TestPKI) -> None:
    node = pki.leaf("node-1")
    snap = parse_crl(pki.crl_bytes(revoked=[node.cert.serial_number]), trusted=load_trusted_cas(pki.bundle))
    assert snap.is_revoked(node.cert)
    assert not snap.is_revoked(pki.leaf("node-2").cert)
    assert snap.next_update is not None and not snap.is_stale(dt.datetime.now(dt.UTC))
    assert snap.is_stale(snap.next_update)


def test_crl_from_untrusted_ca_refused(pki: TestPKI) -> None:
    pki.issuing = pki.other_ca()
    with pytest.raises(CRLError, match="not a trusted CA") as info:
        parse_crl(pki.crl_bytes(), trusted=load_trusted_cas(pki.root / "bundle.pem"))
    assert info.value.rule == "A6"


def test_crl_with_forged_signature_refused(pki: TestPKI) -> None:
    genuine = pki.issuing
    rogue = pki.other_ca(genuine.cert.subject.rfc4514_string())
    pki.issuing = type(genuine)(cert=genuine.cert, key=rogue.key)  # right name, wrong key
    with pytest.raises(CRLError, match="not a trusted CA"):
        parse_crl(pki.crl_bytes(), trusted=load_trusted_cas(pki.bundle))


def test_rollback_to_older_crl_refused(pki: TestPKI) -> None:
    trusted = load_trusted_cas(pki.bundle)
    now = dt.datetime.now(dt.UTC)
    old = pki.crl_bytes(revoked=[], last_update=now - dt.timedelta(hours=1))
    new = parse_crl(pki.crl_bytes(revoked=[42], last_update=now), trusted=trusted)
    with pytest.raises(CRLError, match="rollback"):
        parse_crl(old, trusted=trusted, previous=new)


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"]
)
def test_garbage_refused(pki: TestPKI, data: bytes) -> None:
    with pytest.raises(CRLError, match="unparseable"):
        parse_crl(data, trusted=load_trusted_cas(pki.bundle))


def test_several_crls_in_one_file(pki: TestPKI) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    now = dt.datetime.now(dt.UTC)
    root_crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.root_ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=1))
        .sign(pki.root_ca.key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    snap = parse_crl(pki.crl_bytes(revoked=[7]) + root_crl, trusted=load_trusted_cas(pki.bundle))
    assert len(snap.last_update) == 2
    assert snap.next_update is not None and snap.next_update <= now + dt.timedelta(hours=1)
