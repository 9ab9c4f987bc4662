"""CRL snapshots checked before they are put in force (SPEC A6).

A new CRL file is validated once (every CRL signed by a CA in the trust bundle, never older than the one it
replaces) so a corrupt, forged or rolled-back CRL never replaces a good one. The snapshot's set of revoked
(issuer, serial) pairs is what server listeners look every handshake's leaf up in, and what closes the live
connections of newly revoked peers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.errors import CRLError

_PEM_BEGIN = b"-----BEGIN X509 CRL-----"

#: A revoked certificate is named by its issuer (RFC 4514) and serial: serials are unique per issuer only.
RevokedId = tuple[str, int]


@dataclass(frozen=True)
class CRLSnapshot:
    """One validated CRL file (possibly several CRLs, one per issuing CA)."""

    data: bytes
    sha256: str
    revoked: frozenset[RevokedId]
    last_update: dict[str, datetime]
    next_update: datetime | None

    def is_stale(self, now: datetime) -> bool:
        """Past nextUpdate (or a CRL without one is never stale)."""
        return self.next_update is not None and now >= self.next_update

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return (cert.issuer.rfc4514_string(), cert.serial_number) in self.revoked

    def covers(self, cert: x509.Certificate) -> bool:
        """A CRL from ``cert``'s issuer is in this snapshot (without one, its revocation is unknowable)."""
        return cert.issuer.rfc4514_string() in self.last_update

    def chain_refusal(self, cert: x509.Certificate, trusted: Sequence[x509.Certificate]) -> str | None:
        """Why ``cert`` must be refused under this snapshot, checking its whole chain, or None.

        The leaf needs its issuer's CRL (else its revocation is unknowable); every CA above it up to the
        root is looked up in the CRLs that are present, so an intermediate the root revoked takes every
        leaf it issued down with it (the wire agrees with ``certutil verify``).
        """
        if self.is_revoked(cert):
            return "certificate revoked"
        if not self.covers(cert):
            return "unable to get certificate CRL"
        for ca in _issuers(cert, trusted):
            if self.is_revoked(ca):
                return "issuer certificate revoked"
        return None


def _issuers(cert: x509.Certificate, trusted: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The CAs above ``cert`` in the trust bundle, nearest first (matched by name and signature)."""
    chain: list[x509.Certificate] = []
    current = cert
    while current.issuer != current.subject and len(chain) < 8:
        parent = next((ca for ca in trusted if ca.subject == current.issuer and _issued(current, ca)), None)
        if parent is None or parent in chain:
            break
        chain.append(parent)
        current = parent
    return chain


def _issued(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def _split_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    if _PEM_BEGIN not in data:
        return [x509.load_der_x509_crl(data)]
    crls = []
    for chunk in data.split(_PEM_BEGIN)[1:]:
        crls.append(x509.load_pem_x509_crl(_PEM_BEGIN + chunk))
    return crls


def load_trusted_cas(bundle: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle.read_bytes())


def parse_crl(
    data: bytes,
    *,
    trusted: Sequence[x509.Certificate],
    previous: CRLSnapshot | None = None,
    source: str = "crl",
) -> CRLSnapshot:
    """Validate ``data`` (PEM with one or more CRLs, or one DER CRL) and return its snapshot.

    Raises CRLError naming the rule when a CRL is unparseable, signed by no trusted CA, or older than the CRL
    it would replace (a rollback would un-revoke certificates).
    """
    try:
        crls = _split_crls(data)
    except ValueError as exc:
        raise CRLError(f"unparseable CRL: {exc}", path=source, rule="A6") from None
    if not crls:
        raise CRLError("no CRL in file", path=source, rule="A6")
    by_name = {ca.subject.rfc4514_string(): ca for ca in trusted}
    revoked: set[RevokedId] = set()
    last_update: dict[str, datetime] = {}
    next_updates: list[datetime] = []
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        ca = by_name.get(issuer)
        if ca is None or not _signed_by(crl, ca):
            raise CRLError(f"CRL issuer {issuer!r} is not a trusted CA", path=source, rule="A6")
        if (
            previous is not None
            and issuer in previous.last_update
            and crl.last_update_utc < previous.last_update[issuer]
        ):
            raise CRLError(
                "CRL is older than the one in force (rollback refused)",
                path=source,
                rule="A6",
                hint="publish a freshly generated CRL",
            )
        last_update[issuer] = crl.last_update_utc
        if crl.next_update_utc is not None:
            next_updates.append(crl.next_update_utc)
        revoked.update((issuer, entry.serial_number) for entry in crl)
    return CRLSnapshot(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        revoked=frozenset(revoked),
        last_update=last_update,
        next_update=min(next_updates) if next_updates else None,
    )


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    public = ca.public_key()
    if not isinstance(public, Ed25519PublicKey):
        return False
    try:
        return crl.is_signature_valid(public)
    except (InvalidSignature, TypeError, ValueError):
        return False
