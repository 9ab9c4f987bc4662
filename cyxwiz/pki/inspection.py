"""What ``cyxwiz certutil inspect`` shows: a plain dict per certificate or CRL (also its ``--json``)."""

from __future__ import annotations

import contextlib

from cryptography import x509

from cyxwiz.pki.certs import fingerprint_sha256, is_self_signed, role_of, x5t_s256
from cyxwiz.pki.keys import key_algorithm_name
from cyxwiz.pki.peerid import peer_id

_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)

Info = dict[str, object]


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _sans(cert: x509.Certificate) -> list[str]:
    san = _ext(cert, x509.SubjectAlternativeName)
    if not isinstance(san, x509.SubjectAlternativeName):
        return []
    out = [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
    out += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    out += [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
    return out


def certificate_info(cert: x509.Certificate) -> Info:
    public = cert.public_key()
    algorithm = key_algorithm_name(public)
    constraints = _ext(cert, x509.BasicConstraints)
    usage = _ext(cert, x509.KeyUsage)
    eku = _ext(cert, x509.ExtendedKeyUsage)
    role = role_of(cert)
    info: Info = {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key_type": algorithm,
        "is_ca": bool(isinstance(constraints, x509.BasicConstraints) and constraints.ca),
        "path_length": constraints.path_length if isinstance(constraints, x509.BasicConstraints) else None,
        "self_signed": is_self_signed(cert),
        "key_usage": [f for f in _KEY_USAGE_FLAGS if isinstance(usage, x509.KeyUsage) and getattr(usage, f)],
        "extended_key_usage": [oid._name for oid in eku] if isinstance(eku, x509.ExtendedKeyUsage) else [],
        "subject_alt_names": _sans(cert),
        "role": role.value if role else None,
        "sha256_fingerprint": fingerprint_sha256(cert).hex(":").upper(),
        "x5t#S256": x5t_s256(cert),
        "peer_id": peer_id(cert) if algorithm == "Ed25519" else None,
    }
    return info


def crl_info(crl: x509.CertificateRevocationList) -> Info:
    entries = []
    for revoked in crl:
        reason = None
        try:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        except x509.ExtensionNotFound:
            reason = "unspecified"
        entries.append(
            {
                "serial": f"{revoked.serial_number:x}",
                "revoked_at": revoked.revocation_date_utc.isoformat(),
                "reason": reason,
            }
        )
    number = None
    with contextlib.suppress(x509.ExtensionNotFound):
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return {
        "crl_issuer": crl.issuer.rfc4514_string(),
        "crl_number": number,
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": crl.next_update_utc.isoformat() if crl.next_update_utc else None,
        "revoked": entries,
    }
