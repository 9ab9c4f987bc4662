"""Verifier-signed verification reports: the only thing that lets an escrow pay a node (F1, threat I).

The verifier service signs, with the Ed25519 key of a certificate of role ``verifier``, a short statement
binding one job, one node (its certificate PeerID and payout wallet), one escrow account, the SHA-256 of
the full verification report and the verdict. :class:`AttestationPolicy` is what the ledger and the
verifier service check before a release is co-signed: the certificate chains to the CA, is not revoked
and has role ``verifier``; the signature covers the canonical bytes; every bound field matches the escrow
being settled; the verdict is ``pass``. Each refusal is its own exception, so callers and audits can tell a
forged report from a failing one.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding

from cyxwiz.errors import CyxwizError, EscrowError
from cyxwiz.ledger.records import ProofRequiredError

FORMAT = "cyxwiz-report-attestation/1"
Verdict = Literal["pass", "fail", "fraud"]
_VERDICTS = ("pass", "fail", "fraud")
#: how many verified report signatures a policy remembers (a few per escrow in flight)
_GOOD_SIGNATURES = 4096


class ReportRefusedError(EscrowError):
    """A verification report attestation was refused; nothing was signed or sent (F1)."""

    code = "escrow-report-refused"
    http_status = 403


class ReportSignatureError(ReportRefusedError):
    """The attestation's signature does not verify (made up or edited)."""

    code = "escrow-report-signature"


class ReportSignerError(ReportRefusedError):
    """The attestation was signed by a certificate that is not a valid ``verifier`` certificate."""

    code = "escrow-report-signer"


class ReportBindingError(ReportRefusedError):
    """The attestation is for another job, node, wallet or escrow than the one being settled."""

    code = "escrow-report-binding"


class ReportVerdictError(ReportRefusedError):
    """The attested verdict does not allow this move (a failing report cannot release)."""

    code = "escrow-report-verdict"


def report_sha256(report: Mapping[str, Any]) -> str:
    """SHA-256 of a verification report's canonical JSON (RFC 8785): the hash the memo and audit carry."""
    from cyxwiz.verification.canonical import canonical_json

    return hashlib.sha256(canonical_json(dict(report))).hexdigest()


@dataclass(frozen=True, kw_only=True)
class ReportAttestation:
    """A signed verdict on one job's verification report. ``certificate`` is the signer's PEM."""

    job_id: str
    node_peer_id: str
    node_wallet: str
    escrow: str
    report_sha256: str
    verdict: str
    issued_at: str
    certificate: str
    signature: str  # base64 Ed25519 over signing_bytes()
    #: RFC 6962 leaf hash of the verifier's audit record of this verdict ("" when it keeps no log):
    #: the settlement memo cites it, ``cyxwiz audit prove`` proves it included
    audit_leaf: str = ""

    def statement(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "job_id": self.job_id,
            "node_peer_id": self.node_peer_id,
            "node_wallet": self.node_wallet,
            "escrow": self.escrow,
            "report_sha256": self.report_sha256,
            "verdict": self.verdict,
            "issued_at": self.issued_at,
            "audit_leaf": self.audit_leaf,
        }

    def signing_bytes(self) -> bytes:
        return json.dumps(self.statement(), sort_keys=True, separators=(",", ":")).encode()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        # every field is a str: a flat copy is what dataclasses.asdict builds, without its deep copies
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to_json(self) -> str:
        # Frozen: the text never changes; a release reads it several times (memo, row, hash, cache key).
        text: str | None = self.__dict__.get("_json")
        if text is None:
            text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_json", text)
        return text

    @classmethod
    def parse(cls, value: object) -> ReportAttestation:
        """From an attestation, its dict or its JSON text; anything else is a missing report."""
        if isinstance(value, ReportAttestation):
            return value
        if isinstance(value, str):
            # A release parses the same text three times (ledger, verifier, memo): parsed once. The
            # result is frozen, so sharing it is the same as parsing again; refusals are never cached.
            return _parse_text(value)
        if isinstance(value, bytes):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, Mapping):
            raise ProofRequiredError(
                "a verifier-signed verification report is required to release",
                field="report",
                rule="F1",
                hint="release with the attestation the verifier service returned for a passing report",
            )
        names = cls.__dataclass_fields__
        if set(value) not in (set(names), set(names) - {"audit_leaf"}) or not all(
            isinstance(value[k], str) for k in value
        ):
            raise ReportSignatureError(
                "the report attestation is malformed (fields or types)", field="report", rule="F1"
            )
        return cls(**{k: str(value[k]) for k in names if k in value})


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> ReportAttestation:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return ReportAttestation.parse(value if isinstance(value, Mapping) else None)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()  # one system call per CRL file and check
    except FileNotFoundError:
        return None
    return found.st_mtime_ns, found.st_size


def sign_attestation(
    *,
    key: Ed25519PrivateKey,
    certificate: x509.Certificate,
    job_id: str,
    node_peer_id: str,
    node_wallet: str,
    escrow: str,
    report_sha256: str,
    verdict: Verdict,
    issued_at: dt.datetime | None = None,
    audit_leaf: str = "",
) -> ReportAttestation:
    if verdict not in _VERDICTS:
        raise ReportVerdictError(f"verdict must be one of {_VERDICTS}", field="verdict", rule="F1")
    unsigned = ReportAttestation(
        job_id=job_id,
        node_peer_id=node_peer_id,
        node_wallet=node_wallet,
        escrow=escrow,
        report_sha256=report_sha256,
        verdict=verdict,
        issued_at=(issued_at or dt.datetime.now(dt.UTC)).isoformat(),
        certificate=certificate.public_bytes(Encoding.PEM).decode(),
        signature="",
        audit_leaf=audit_leaf,
    )
    signature = base64.b64encode(key.sign(unsigned.signing_bytes())).decode()
    return ReportAttestation(**{**unsigned.to_dict(), "signature": signature})


def _good_key(attestation: ReportAttestation, raw_key: bytes) -> tuple[str, bytes]:
    """Where a good signature is remembered: the whole signed attestation's SHA-256 and the signer's raw
    key, never the job (another attestation of the same job is checked anew)."""
    return attestation.sha256(), raw_key


@dataclass(frozen=True)
class AttestationPolicy:
    """The trust anchors report attestations are checked against (the CA bundle and its CRLs)."""

    trusted: Sequence[x509.Certificate]
    crls: Sequence[x509.CertificateRevocationList] = ()
    #: the CRL files behind ``crls``: re-read when they change, so a verifier certificate revoked at the
    #: CA stops releasing money without a restart (A6)
    crl_paths: Sequence[Path] = ()
    #: signer PEM -> its public key, once the chain, CRLs and role were checked; valid while the CRL files
    #: are unchanged (and, for expiry, checked on every use)
    _verified: dict[str, tuple[Ed25519PublicKey, dt.datetime, bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _state: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: (the attestation's SHA-256, the signer's raw public key) of every signature that verified: the
    #: ledger and an in-process verifier check the same report, and Ed25519 verification is the costliest
    #: step of a release. Keyed by the whole signed attestation (statement, certificate, signature) and
    #: the key, never by job: any other bytes verify afresh. Cleared with the signer cache on a CRL change.
    _good: dict[tuple[str, bytes], None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_files(cls, bundle: Path, *, crls: Sequence[Path] = ()) -> AttestationPolicy:
        from cyxwiz.pki.certs import load_certificates

        policy = cls(trusted=load_certificates(bundle), crl_paths=tuple(crls))
        policy._refresh()
        return policy

    def _current_crls(self) -> Sequence[x509.CertificateRevocationList]:
        if not self.crl_paths:
            return self.crls
        self._refresh()
        return self._state["crls"]  # type: ignore[no-any-return]

    def _refresh(self) -> None:
        from cyxwiz.pki.certs import load_crls

        stamps = tuple(_stamp(p) for p in self.crl_paths)
        if self._state.get("stamps") == stamps:
            return
        self._state["crls"] = [*self.crls, *(c for p in self.crl_paths if p.exists() for c in load_crls(p))]
        self._state["stamps"] = stamps
        self._verified.clear()  # a certificate checked against the old CRLs is checked again
        self._good.clear()

    def certificate_of(
        self, pem: str | x509.Certificate, *, role: str, current: bool = True
    ) -> x509.Certificate:
        """One PEM certificate that chains to the trust bundle, is valid now, is not revoked (the CRL files
        re-read when they changed, A6) and has ``role``: what a node presents beside a document its key
        signed (a stake withdrawal). ``current=False``: only that this CA issued it (its chain as of its
        own start; expired or revoked since, it still names whom it was issued to). Raises the PKI's
        precise error, or ValidationError for the role."""
        from cyxwiz.errors import ValidationError
        from cyxwiz.pki.certs import parse_certificates, role_of
        from cyxwiz.pki.verify import build_chain, check_leaf, verify_certificate

        try:
            [cert] = [pem] if isinstance(pem, x509.Certificate) else parse_certificates(pem.encode())
        except (CyxwizError, ValueError):
            raise ValidationError("not one PEM certificate", field="certificate", rule="A2") from None
        if current:
            verify_certificate(cert, trusted=self.trusted, crls=self._current_crls(), purpose="client")
        else:
            check_leaf(cert, purpose="client")
            build_chain(cert, trusted=self.trusted, at=cert.not_valid_before_utc)
        if role_of(cert) != role:
            raise ValidationError(f"the certificate's role is not {role!r}", field="certificate", rule="A1")
        return cert

    def verify_signature(self, value: object) -> ReportAttestation:
        """Signer and signature only (no binding): a valid ``verifier`` certificate signed these bytes."""
        attestation = ReportAttestation.parse(value)
        public, raw_key = self._signer(attestation)  # chain, CRL, role and expiry: on every use
        seen = _good_key(attestation, raw_key)
        if seen in self._good:
            return attestation
        try:
            public.verify(base64.b64decode(attestation.signature, validate=True), attestation.signing_bytes())
        except (InvalidSignature, ValueError):
            raise ReportSignatureError(
                "the report's signature does not verify", field="report.signature", rule="F1"
            ) from None
        self._remember(seen)
        return attestation

    def signed_here(self, attestation: ReportAttestation, key: Ed25519PrivateKey) -> None:
        """``attestation`` was just signed in this process with ``key``: its signature is good by
        construction, so the co-sign of its release (the verifier service's own verdict) skips the Ed25519
        verify. Cached under the signing key: it only ever hits when the attestation's certificate carries
        that very key, whose chain, CRLs, role and expiry :meth:`verify_signature` still checks then."""
        self._remember(_good_key(attestation, key.public_key().public_bytes_raw()))

    def _remember(self, seen: tuple[str, bytes]) -> None:
        if len(self._good) >= _GOOD_SIGNATURES:
            self._good.clear()  # bounded; threads share it, so no partial eviction mid-iteration
        self._good[seen] = None

    def _signer(self, attestation: ReportAttestation) -> tuple[Ed25519PublicKey, bytes]:
        """The signer's key and its raw bytes (the cache key of its good signatures)."""
        crls = self._current_crls()
        known = self._verified.get(attestation.certificate)
        if known is not None and dt.datetime.now(dt.UTC) < known[1]:
            return known[0], known[2]
        from cyxwiz.pki.certs import Role, parse_certificates, role_of
        from cyxwiz.pki.verify import verify_certificate

        try:
            [cert] = parse_certificates(attestation.certificate.encode())
        except (CyxwizError, ValueError):
            raise ReportSignerError(
                "the report's signer certificate is not one PEM certificate", field="report.certificate"
            ) from None
        try:
            verify_certificate(cert, trusted=self.trusted, crls=crls, purpose="client")
        except CyxwizError as exc:
            raise ReportSignerError(
                f"the report's signer certificate is refused: {exc.message}",
                field="report.certificate",
                rule="F1",
            ) from None
        if role_of(cert) is not Role.VERIFIER:
            raise ReportSignerError(
                "the report is not signed by a certificate of role 'verifier'",
                field="report.certificate",
                rule="F1",
            )
        public = cert.public_key()
        if not isinstance(public, Ed25519PublicKey):  # pragma: no cover - verify_certificate refuses others
            raise ReportSignerError("the signer key is not Ed25519", field="report.certificate", rule="A2")
        raw_key = public.public_bytes_raw()
        self._verified[attestation.certificate] = (public, cert.not_valid_after_utc, raw_key)
        return public, raw_key

    def check(
        self,
        value: object,
        *,
        job_id: str,
        node_peer_id: str | None,
        node_wallet: str | None,
        escrow: str,
        verdicts: tuple[str, ...] = ("pass",),
    ) -> ReportAttestation:
        """Signature, signer and every binding of ``value`` against the escrow being settled."""
        attestation = self.verify_signature(value)
        expected = {
            "job_id": job_id,
            "node_peer_id": node_peer_id,
            "node_wallet": node_wallet,
            "escrow": escrow,
        }
        for name, want in expected.items():
            if want is None or getattr(attestation, name) != want:
                raise ReportBindingError(
                    f"the report is bound to another {name.replace('_', ' ')} than this escrow's",
                    field=f"report.{name}",
                    rule="F1",
                )
        if attestation.verdict not in verdicts:
            raise ReportVerdictError(
                f"the report's verdict is {attestation.verdict!r}; this move needs {' or '.join(verdicts)}",
                field="report.verdict",
                rule="F1",
            )
        return attestation
