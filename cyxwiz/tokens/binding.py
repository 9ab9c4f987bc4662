"""Certificate-bound tokens (SPEC B5, RFC 8705 §3.1): ``cnf: {"x5t#S256": base64url(SHA-256(DER))}``.

The verifier takes the peer certificate from the TLS session (``ssl.SSLSocket.getpeercert(True)`` gives
DER) and compares thumbprints in constant time; a stolen token is useless without the certificate's key.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography import x509

from cyxwiz.pki.certs import x5t_s256
from cyxwiz.tokens.keys import b64url

CNF_MEMBER = "x5t#S256"

PeerCert = x509.Certificate | bytes


def cert_thumbprint(cert: PeerCert) -> str:
    """base64url(SHA-256(DER)) of a certificate (an ``x509.Certificate`` or its DER bytes)."""
    if isinstance(cert, bytes):
        # DER straight from ssl.SSLSocket.getpeercert(True): hashing it needs no parse.
        return b64url(hashlib.sha256(cert).digest())
    return x5t_s256(cert)


def cnf_claim(cert: PeerCert) -> dict[str, str]:
    return {CNF_MEMBER: cert_thumbprint(cert)}


def thumbprints_match(expected: str, cert: PeerCert) -> bool:
    return hmac.compare_digest(expected.encode(), cert_thumbprint(cert).encode())
