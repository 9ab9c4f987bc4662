"""Short-lived node certificates that renew themselves (SPEC A7 "automatic renewal"; issue 18).

The anchor is SPIFFE/SPIRE: short workload certificates, renewed automatically. A node certificate is
valid for :data:`DEFAULT_LIFETIME` (24 h); at half-life the agent makes a new key and a CSR and sends it
over its *current* mTLS identity — the handshake has already refused a revoked or expired certificate,
and the session token is bound to that same certificate — and gets back a certificate for the same name
and role with the new key. The node (its ``node_id``, queue, wallet, jobs) stays the same; the earlier
certificate stays the node's until it expires, so nothing in flight is dropped when the agent switches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from cyxwiz.errors import AuthorizationError, ValidationError
from cyxwiz.transport.identity import PeerIdentity

DEFAULT_LIFETIME = dt.timedelta(hours=24)


@dataclass(frozen=True)
class NodeCertIssuer:
    """Signs node renewal CSRs with the issuing CA in ``ca_dir``."""

    ca_dir: Path
    lifetime: dt.timedelta = DEFAULT_LIFETIME

    def sign(self, csr_pem: str, *, current: PeerIdentity) -> x509.Certificate:
        from cyxwiz.pki import profiles
        from cyxwiz.pki.ca import CertificateAuthority

        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise ValidationError("not a PEM certificate signing request", field="csr", rule="A1") from None
        if not csr.is_signature_valid:
            raise ValidationError("CSR is not signed by its own key", field="csr", rule="A1")
        public = csr.public_key()
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise ValidationError("node keys are Ed25519", field="csr", rule="A2")
        if public == current.certificate.public_key():
            raise ValidationError("a renewal needs a new key", field="csr", rule="A7")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        current_cn = current.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [n.value for n in current_cn]:
            raise AuthorizationError("a renewal keeps the certificate's name", field="csr", rule="C2")
        ca = CertificateAuthority.from_dir(self.ca_dir)
        try:
            current.certificate.verify_directly_issued_by(ca.certificate)
        except (ValueError, TypeError, InvalidSignature):
            # A node of another organization of the federation (A7) renews with its own CA: renewed here it
            # would leave that organization's roles, names and CRL behind.
            raise AuthorizationError(
                "a certificate issued by another organization's CA is renewed by that organization",
                field="csr",
                rule="A7",
            ) from None
        now = dt.datetime.now(dt.UTC)
        # leaf_builder counts validity in whole days from not_before: start the window so that it ends
        # ``lifetime`` from now (a lifetime under a day is what makes a certificate short-lived).
        days = max(1, -(-self.lifetime // dt.timedelta(days=1)))
        start = now + self.lifetime - dt.timedelta(days=days)
        builder = profiles.leaf_builder(
            subject=current.certificate.subject,
            issuer=ca.certificate,
            public_key=public,
            role=profiles.parse_role("worker"),
            server=False,
            client=True,
            dns_names=(),
            ip_addresses=(),
            days=days,
            not_before=start,
        )
        return builder.sign(ca.private_key, None)
