"""What the issuer revokes when the coordinator asks, and what it refuses (issue 17; SPEC A6, F1, I).

The coordinator faces nodes and users on the internet; an attacker who owns it owns its socket to the
issuer. Were any serial it names revoked, it could revoke the verifier's certificate (no report attests,
no escrow is ever released), the gateway's, its peers', another organization's: denial of service on the
money and on the control plane. So a request carries the certificates themselves, never bare serials (the
CA keeps no index of what it issued), and each must be a ``worker`` certificate this CA directly issued
(its signature checked against the CA's certificate); the ``earlier`` ones must bear the current one's
name, as renewal compares names (:func:`common_names`), i.e. be the same node's renewed-from certificates.
Every certificate is checked before any is revoked: a refusal revokes nothing.

Any other certificate is revoked by an operator on the issuer's host (``cyxwiz certutil revoke`` then
``cyxwiz certutil gen-crl``; the issuer's next CRL carries it), never over the socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cyxwiz.errors import AuthorizationError, ConflictError, ValidationError
from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.certs import Role, role_of

#: A node's unexpired earlier certificates: two or three at a half-life renewal; the bound keeps a body small.
MAX_EARLIER = 32
_MAX_PEM = 16384
_FIELDS = frozenset({"certificate", "reason", "earlier"})
_OPERATOR = "an operator revokes it on the issuer host (cyxwiz certutil revoke)"


class RevocationRefusedError(AuthorizationError):
    """The issuer will not revoke this over its socket: not a worker certificate of its own CA, or an
    ``earlier`` one of another node."""

    code = "revocation-refused"


def common_names(name: x509.Name) -> list[str]:
    """A node's name as the issuer compares it: the subject's common names (renewal keeps them)."""
    return [str(n.value) for n in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


@dataclass(frozen=True, kw_only=True)
class RevocationRequest:
    """Revoke ``certificate`` (a node's current worker certificate) and ``earlier`` (its renewed-from,
    unexpired ones), as PEM on the wire so the issuer checks each one itself."""

    certificate: x509.Certificate
    reason: str = "unspecified"
    earlier: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_dict(cls, data: object) -> RevocationRequest:
        if not isinstance(data, Mapping) or not {"certificate"} <= set(data) <= _FIELDS:
            raise ValidationError(
                "must be {certificate, reason?, earlier?}: certificates to revoke (PEM), not serials",
                field="body",
                rule="A6",
            )
        earlier = data.get("earlier") or []
        if not isinstance(earlier, list) or len(earlier) > MAX_EARLIER:
            raise ValidationError(
                f"earlier must be a list of at most {MAX_EARLIER} PEM certificates",
                field="earlier",
                rule="A6",
            )
        reason = data.get("reason") or "unspecified"
        if not isinstance(reason, str) or len(reason) > 64:
            raise ValidationError("reason must be a short text", field="reason", rule="A6")
        return cls(
            certificate=_pem(data["certificate"], "certificate"),
            reason=reason,
            earlier=tuple(_pem(pem, f"earlier[{i}]") for i, pem in enumerate(earlier)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "certificate": _to_pem(self.certificate),
            "reason": self.reason,
            "earlier": [_to_pem(c) for c in self.earlier],
        }


def revocable(ca: CertificateAuthority, request: RevocationRequest) -> list[x509.Certificate]:
    """The request's certificates to revoke, the current one first; those already revoked (or repeated)
    left out, so a repeat request finishes a revocation a failure left half-done (the current one revoked,
    some earlier ones not). Raises the precise refusal, before anything is revoked, unless every one is a
    worker certificate ``ca`` issued and every earlier one bears the current one's name; ConflictError
    when every one of them is revoked already."""
    current = request.certificate
    _check_worker_of(ca, current, field="certificate")
    name = common_names(current.subject)
    if not name:
        raise RevocationRefusedError(
            "a node's certificate names its node (no common name)", field="certificate", rule="A6"
        )
    revoked = {r.serial for r in ca.revocations()}
    chosen = [] if current.serial_number in revoked else [current]
    seen = {current.serial_number}
    for i, cert in enumerate(request.earlier):
        field = f"earlier[{i}]"
        _check_worker_of(ca, cert, field=field)
        if common_names(cert.subject) != name:
            raise RevocationRefusedError(
                f"an earlier certificate bears the node's own name {name}, not {common_names(cert.subject)}",
                field=field,
                rule="A6",
            )
        if cert.serial_number not in seen | revoked:
            chosen.append(cert)
            seen.add(cert.serial_number)
    if not chosen:
        raise ConflictError(
            f"serial {current.serial_number:x} is already revoked, and every earlier certificate sent too",
            field="certificate",
            rule="A6",
        )
    return chosen


def _check_worker_of(ca: CertificateAuthority, cert: x509.Certificate, *, field: str) -> None:
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise RevocationRefusedError(
            f"certificate {cert.serial_number:x} was not issued by this CA (or its signature is broken): "
            "another organization's CA revokes its own",
            field=field,
            rule="A6",
        ) from None
    role = role_of(cert)
    if role is not Role.WORKER:
        raise RevocationRefusedError(
            f"only a worker certificate is revoked over the issuer's socket, not {role}: {_OPERATOR}",
            field=field,
            rule="A6",
        )


def _pem(value: object, field: str) -> x509.Certificate:
    try:
        if not isinstance(value, str) or len(value) > _MAX_PEM:
            raise ValueError
        return x509.load_pem_x509_certificate(value.encode())
    except ValueError:
        raise ValidationError(
            "not a PEM certificate (a revocation names certificates, not serials)", field=field, rule="A6"
        ) from None


def _to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()
