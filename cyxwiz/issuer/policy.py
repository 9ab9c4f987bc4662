"""What the issuer signs, and what it refuses (issue 17; SPEC A1, A3, A6, A7, C2, F1).

A renewal is issued only when every fact it rests on is checked here, not taken from the coordinator that
forwards it: the node's *current* certificate is a worker certificate this CA issued, valid now and not
revoked; the CSR is self-signed by a *new* Ed25519 key under the same name; and the current key signed the
renewal link (:class:`~cyxwiz.ledger.payout.SignedRenewalLink`, the very document the verifier follows)
naming exactly that new key, lately. The coordinator holds certificates (they are public) but no node key,
so it can forge none of this: it cannot get a certificate for a key it holds, for another name or for any
role but ``worker``. The result is short-lived (:data:`DEFAULT_LIFETIME`), as the node agent expects.

A revocation is signed only for worker certificates this CA issued: a node's current one and its earlier
ones under the same name, each sent whole and checked (:mod:`cyxwiz.issuer.revocation`); a coordinator
that asks for the verifier's, the gateway's or another node's is refused, audited, and nothing is revoked.
An operator revokes any other certificate on this host (``cyxwiz certutil revoke``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.errors import AuthorizationError, ConflictError, CyxwizError, ValidationError
from cyxwiz.issuer.revocation import RevocationRequest, common_names, revocable
from cyxwiz.ledger.payout import MAX_SKEW_S, RenewalLinkError, SignedRenewalLink
from cyxwiz.pki.ca import DEFAULT_CRL_DAYS, CertificateAuthority
from cyxwiz.pki.certs import Role, role_of
from cyxwiz.pki.peerid import peer_id

#: A node certificate's lifetime: short, renewed at half-life by the agent (SPIFFE-style, A7).
DEFAULT_LIFETIME = dt.timedelta(hours=24)
#: The longest lifetime the issuer may be configured with (A3 recommends 90 days for node certificates).
MAX_LIFETIME = dt.timedelta(days=90)
#: A renewal link older than this is not this renewal's: the agent signs it just before it asks.
LINK_MAX_AGE = dt.timedelta(minutes=10)
ACTOR = "issuer"


class IssuanceRefusedError(AuthorizationError):
    """The issuer will not sign this: the wrong role, CA, name, or a current certificate that is not good."""

    code = "issuance-refused"


@dataclass(frozen=True, kw_only=True)
class RenewalRequest:
    """What the coordinator forwards: the node's current certificate (as its handshake presented it), the
    CSR for the new key, and the link the current key signed to the new key."""

    certificate: x509.Certificate
    csr: x509.CertificateSigningRequest
    link: SignedRenewalLink

    @classmethod
    def build(cls, *, certificate: x509.Certificate, csr_pem: str, link: object) -> RenewalRequest:
        """Parse the node's parts (the CSR first: a CSR that is no CSR is named before a missing link)."""
        csr = _csr(csr_pem)
        if link is None:
            raise ValidationError(
                "a renewal needs the link the current key signs to the new one",
                field="renewal_link",
                rule="A7",
            )
        return cls(certificate=certificate, csr=csr, link=SignedRenewalLink.from_dict(link))

    @classmethod
    def from_dict(cls, data: object) -> RenewalRequest:
        if not isinstance(data, Mapping) or set(data) != {"certificate", "csr", "renewal_link"}:
            raise ValidationError("must be {certificate, csr, renewal_link}", field="body", rule="A7")
        pem = data["certificate"]
        try:
            if not isinstance(pem, str) or len(pem) > 16384:
                raise ValueError
            certificate = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            raise ValidationError("not a PEM certificate", field="certificate", rule="A1") from None
        return cls.build(certificate=certificate, csr_pem=data["csr"], link=data["renewal_link"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate.public_bytes(Encoding.PEM).decode(),
            "csr": self.csr.public_bytes(Encoding.PEM).decode(),
            "renewal_link": self.link.to_dict(),
        }


@dataclass
class NodeCertIssuer:
    """Renews worker certificates and signs CRLs with the issuing CA ``ca`` (whose key only it holds)."""

    ca: CertificateAuthority
    lifetime: dt.timedelta = DEFAULT_LIFETIME
    audit: AuditSink | None = None

    @classmethod
    def from_dir(
        cls,
        ca_dir: Path,
        *,
        lifetime: dt.timedelta = DEFAULT_LIFETIME,
        audit: AuditSink | None = None,
        passphrase: bytes | None = None,
    ) -> NodeCertIssuer:
        """The issuing CA in ``ca_dir`` (``ca-key.pem`` 0600 or ``ca-key.uri`` in a token); refuses a
        lifetime outside 1 s .. :data:`MAX_LIFETIME`."""
        if not dt.timedelta(seconds=1) <= lifetime <= MAX_LIFETIME:
            raise ValidationError(
                "node certificate lifetime must be 1 s .. 90 days", field="lifetime", rule="A3"
            )
        ca = CertificateAuthority.from_dir(ca_dir, passphrase=passphrase)
        return cls(ca=ca, lifetime=lifetime, audit=audit)

    # --- renewal ------------------------------------------------------------------------------------

    def renew(self, request: RenewalRequest, *, now: dt.datetime | None = None) -> x509.Certificate:
        """The new worker certificate, or the precise refusal (audited; nothing signed)."""
        current = request.certificate
        name = common_names(current.subject)
        try:
            public = self._check(request, now or dt.datetime.now(dt.UTC))
        except CyxwizError as exc:
            self._record_issue(current, name, allowed=False, reason=f"{exc.code}: {exc.message}")
            raise
        cert = self._sign(current.subject, public, now or dt.datetime.now(dt.UTC))
        why = f"worker {peer_id(current)} -> {peer_id(cert)} until {cert.not_valid_after_utc.isoformat()}"
        self._record_issue(current, name, allowed=True, reason=why)
        return cert

    def _check(self, request: RenewalRequest, now: dt.datetime) -> ed25519.Ed25519PublicKey:
        current, csr = request.certificate, request.csr
        if not csr.is_signature_valid:
            raise ValidationError("CSR is not signed by its own key", field="csr", rule="A1")
        public = csr.public_key()
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise ValidationError("node keys are Ed25519", field="csr", rule="A2")
        if public == current.public_key():
            raise ValidationError("a renewal needs a new key", field="csr", rule="A7")
        if common_names(csr.subject) != common_names(current.subject):
            raise IssuanceRefusedError("a renewal keeps the certificate's name", field="csr", rule="C2")
        try:
            current.verify_directly_issued_by(self.ca.certificate)
        except (ValueError, TypeError, InvalidSignature):
            # A node of another organization of the federation (A7) renews with its own CA: renewed here it
            # would leave that organization's roles, names and CRL behind.
            raise IssuanceRefusedError(
                "a certificate issued by another organization's CA is renewed by that organization",
                field="csr",
                rule="A7",
            ) from None
        if role_of(current) is not Role.WORKER:
            raise IssuanceRefusedError(
                f"only a worker certificate is renewed here, not {role_of(current)}", field="certificate",
                rule="A1",
            )  # fmt: skip
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            raise IssuanceRefusedError(
                "the current certificate is not valid now", field="certificate", rule="A3"
            )
        if current.serial_number in {r.serial for r in self.ca.revocations()}:
            raise IssuanceRefusedError("the current certificate is revoked", field="certificate", rule="A6")
        self._check_link(request.link, old=peer_id(current), new=peer_id(public), now=now)
        return public

    @staticmethod
    def _check_link(signed: SignedRenewalLink, *, old: str, new: str, now: dt.datetime) -> None:
        link = signed.verify()  # RenewalLinkError unless the old PeerID's own key signed it
        if (link.old_peer_id, link.new_peer_id) != (old, new):
            raise RenewalLinkError(
                "the renewal link names other keys than this renewal's", field="renewal_link", rule="A7"
            )
        issued = dt.datetime.fromtimestamp(link.issued_at / 1000, dt.UTC)
        if not now - LINK_MAX_AGE <= issued <= now + dt.timedelta(seconds=MAX_SKEW_S):
            raise RenewalLinkError(
                "the renewal link is not from this renewal (issued_at too old or ahead)",
                field="renewal_link.issued_at",
                rule="A7",
            )

    def _sign(
        self, subject: x509.Name, public: ed25519.Ed25519PublicKey, now: dt.datetime
    ) -> x509.Certificate:
        from cyxwiz.pki import profiles
        from cyxwiz.pki.ca_keys import checked_certificate

        # leaf_builder counts validity in whole days from not_before: start the window so that it ends
        # ``lifetime`` from now (a lifetime under a day is what makes a certificate short-lived).
        days = max(1, -(-self.lifetime // dt.timedelta(days=1)))
        builder = profiles.leaf_builder(
            subject=subject,
            issuer=self.ca.certificate,
            public_key=public,
            role=Role.WORKER,  # the only role this service ever issues
            server=False,
            client=True,
            dns_names=(),
            ip_addresses=(),
            days=days,
            not_before=now + self.lifetime - dt.timedelta(days=days),
        )
        return checked_certificate(builder.sign(self.ca.private_key, None), self.ca.certificate.public_key())

    # --- revocation ---------------------------------------------------------------------------------

    def revocation_request(self, body: object) -> RevocationRequest:
        """The request in ``body``, or its precise refusal (audited: a bare serial is one)."""
        try:
            return RevocationRequest.from_dict(body)
        except CyxwizError as exc:
            self._record_revocation("request", "", refused=exc)
            raise

    def revoke(self, request: RevocationRequest) -> bytes:
        """Revoke the node's current certificate and its earlier ones (those already revoked are left
        out: a repeat finishes a half-done revocation) and sign a fresh CRL; its PEM. Every certificate is
        checked first: a refusal (audited) revokes none of them; one revoking nothing is a ConflictError."""
        target = format(request.certificate.serial_number, "x")
        try:
            chosen = revocable(self.ca, request)
        except CyxwizError as exc:
            self._record_revocation(target, request.reason, refused=exc)
            raise
        reason = _reason(request.reason)
        done = 0
        for cert in chosen:
            try:
                self.ca.revoke(cert, reason=reason)  # checks again that this CA issued it
            except ConflictError:
                continue  # revoked on this host since the check: as wanted
            done += 1
            self._record_revocation(format(cert.serial_number, "x"), request.reason)
        if not done:  # every one revoked on this host since the check: named, as before it
            conflict = ConflictError(f"serial {target} is already revoked", field="certificate", rule="A6")
            self._record_revocation(target, request.reason, refused=conflict)
            raise conflict
        return self.crl()

    def crl(self, *, days: int = DEFAULT_CRL_DAYS) -> bytes:
        """A freshly signed CRL of every revocation, nextUpdate in ``days`` (a listener's copy nears its
        nextUpdate: the ``crl-refresh`` flow asks); written to the CA directory's CRL file too."""
        return self.ca.generate_crl(days=days).public_bytes(Encoding.PEM)

    # --- audit --------------------------------------------------------------------------------------

    def _record_issue(
        self, current: x509.Certificate, name: list[str], *, allowed: bool, reason: str
    ) -> None:
        if self.audit is None:
            return
        self.audit.record(
            ev.access_decision(
                actor_id=ACTOR, actor_type=ev.ActorType.SERVICE, resource=f"certificate:{','.join(name)}",
                action="certificate.issue", allowed=allowed,
                reason=f"{reason} (current {current.serial_number:x})",
            )
        )  # fmt: skip

    def _record_revocation(self, serial: str, reason: str, *, refused: CyxwizError | None = None) -> None:
        if self.audit is None:
            return
        if refused is None:
            event = ev.revocation(
                actor_id=ACTOR, actor_type=ev.ActorType.SERVICE, kind="certificate", target=serial,
                reason=reason,
            )  # fmt: skip
        else:  # denied, as a refused issuance is: what was asked, and the rule that refused it
            event = ev.access_decision(
                actor_id=ACTOR, actor_type=ev.ActorType.SERVICE, resource=f"certificate:{serial}",
                action="certificate.revoke", allowed=False,
                reason=f"{refused.code}: {refused.message} ({refused.field}, {refused.rule})",
            )  # fmt: skip
        self.audit.record(event)


def _csr(pem: object) -> x509.CertificateSigningRequest:
    try:
        if not isinstance(pem, str) or len(pem) > 8192:
            raise ValueError
        return x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        raise ValidationError("not a PEM certificate signing request", field="csr", rule="A1") from None


def _reason(text: str) -> str:
    names = {flag.name for flag in x509.ReasonFlags}
    return text if text in names else "unspecified"
