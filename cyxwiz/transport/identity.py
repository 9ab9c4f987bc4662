"""The verified identity of a TLS peer (SPEC A5, C2).

Built once per connection from the certificate OpenSSL already verified; the application reads it from the
ASGI scope (``scope["extensions"]["tls"]["cyxwiz_peer"]``) and never from a request body.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.errors import AuthenticationError, CertificateError, KeyTypeError

#: Key of our entry in the ASGI ``tls`` scope extension.
SCOPE_PEER_KEY = "cyxwiz_peer"


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a verified mTLS connection."""

    peer_id: str
    subject: str
    serial: int
    fingerprint_sha256: bytes
    x5t_s256: str
    role: str | None
    not_after: datetime
    certificate: x509.Certificate

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PeerIdentity:
        from cyxwiz.pki.certs import fingerprint_sha256, x5t_s256
        from cyxwiz.pki.peerid import peer_id

        if not isinstance(cert.public_key(), Ed25519PublicKey):
            # OpenSSL lets an RSA/ECDSA leaf through if our CA signed it; the wire policy is Ed25519 only.
            raise KeyTypeError("peer certificate key is not Ed25519", field="certificate", rule="A2")
        return cls(
            peer_id=peer_id(cert),
            subject=cert.subject.rfc4514_string(),
            serial=cert.serial_number,
            fingerprint_sha256=fingerprint_sha256(cert),
            x5t_s256=x5t_s256(cert),
            role=_role(cert),
            not_after=cert.not_valid_after_utc,
            certificate=cert,
        )

    @classmethod
    def from_der(cls, der: bytes) -> PeerIdentity:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise CertificateError(f"unparseable peer certificate: {exc}", field="certificate") from None
        return cls.from_certificate(cert)

    @classmethod
    def from_ssl_object(cls, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> PeerIdentity:
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            raise AuthenticationError("no client certificate presented", field="certificate", rule="D1")
        return cls.from_der(der)

    def log_fields(self) -> dict[str, str]:
        """PeerID and subject, as A5 asks logs to carry (no secret material)."""
        return {"peer_id": self.peer_id, "subject": self.subject, "serial": format(self.serial, "x")}


def _role(cert: x509.Certificate) -> str | None:
    from cyxwiz.pki.certs import role_of

    role = role_of(cert)
    return str(role) if role is not None else None


def peer_from_scope(scope: Mapping[str, Any]) -> PeerIdentity | None:
    """The verified peer of an ASGI request, or None on a connection without a client certificate."""
    tls = scope.get("extensions", {}).get("tls") or {}
    peer = tls.get(SCOPE_PEER_KEY)
    return peer if isinstance(peer, PeerIdentity) else None
