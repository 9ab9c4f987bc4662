"""Forged certificates: test code only (the issuer's revocation tests and the red-team suite). Each looks
like one of ours to anything that reads its fields; only the CA signature check tells (SPEC A1, A6)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from cyxwiz.pki import profiles
from cyxwiz.pki.certs import ROLE_URI_PREFIX, Role


def impostor(issuer: x509.Name, *, serial: int, cn: str = "node-a") -> x509.Certificate:
    """A worker certificate naming ``issuer`` and carrying ``serial`` (the verifier's, say), signed by a
    key the attacker made."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    role = x509.UniformResourceIdentifier(ROLE_URI_PREFIX + Role.WORKER.value)
    return (
        x509.CertificateBuilder()
        .subject_name(profiles.name(cn, role=Role.WORKER))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([role]), critical=False)
        .sign(key, None)
    )


def tampered(cert: x509.Certificate) -> x509.Certificate:
    """The same certificate with one bit of its (trailing Ed25519) signature flipped."""
    der = bytearray(cert.public_bytes(Encoding.DER))
    der[-1] ^= 1
    return x509.load_der_x509_certificate(bytes(der))
