"""Short-lived node certificates that renew themselves (SPEC A7 "automatic renewal"; issues 17, 18).

The anchor is SPIFFE/SPIRE: short workload certificates, renewed automatically. A node certificate is
valid for :data:`DEFAULT_LIFETIME` (24 h); at half-life the agent makes a new key and a CSR, has its current
key sign the renewal link to the new key, and sends both over its *current* mTLS identity. The coordinator
holds no CA key (issue 17: whoever owns it could mint a ``verifier`` or any node): it forwards the request
to the issuer service (:mod:`cyxwiz.issuer`), which checks everything again and signs. The node (its
``node_id``, queue, wallet, jobs) stays the same; the earlier certificate stays the node's until it
expires, so nothing in flight is dropped when the agent switches.
"""

from __future__ import annotations

from typing import Protocol

from cryptography import x509

from cyxwiz.issuer.policy import DEFAULT_LIFETIME, RenewalRequest
from cyxwiz.issuer.revocation import RevocationRequest

__all__ = ["DEFAULT_LIFETIME", "CertificateIssuer", "RenewalRequest", "RevocationRequest"]


class CertificateIssuer(Protocol):
    """What the coordinator asks of the CA: the issuer service's client
    (:class:`~cyxwiz.issuer.service.RemoteIssuer`), or in tests and ``--dev`` the in-process
    :class:`~cyxwiz.issuer.policy.NodeCertIssuer` (the same checks)."""

    def renew(self, request: RenewalRequest) -> x509.Certificate: ...

    def revoke(self, request: RevocationRequest) -> bytes: ...
