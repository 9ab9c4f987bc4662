"""A certificate authority kept in files: issue, sign CSRs, revoke, publish CRLs (SPEC A1, A3, A4, A6).

A CA is a certificate + key pair; the key is a 0600 PKCS#8 file or, given a ``pkcs11:`` URI (RFC 7512) where a
key path goes, an Ed25519 key that never leaves its PKCS#11 token (:mod:`cyxwiz.keys`, SPEC A7): the
certificates and CRLs are then signed inside the token, and each signature is checked against the CA's
public key before anything is written. Its state lives beside the certificate, named after it
(``ca-cert.pem`` → ``ca.revocations.json`` and ``ca-crl.pem``; ``intermediate-ca-cert.pem`` →
``intermediate-ca.revocations.json``/``intermediate-ca-crl.pem``), so several CAs can share a directory
as in the Hypha examples. :meth:`CertificateAuthority.from_dir` is the short form for a directory holding
``ca-cert.pem`` and ``ca-key.pem``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from cyxwiz.errors import CertificateError, ConflictError, CRLError, ValidationError
from cyxwiz.keys import as_private_key, create_key_source, is_pkcs11_uri, open_key_source
from cyxwiz.pki import profiles
from cyxwiz.pki._files import PUBLIC_MODE, write_atomic
from cyxwiz.pki.ca_keys import checked_certificate, key_ref, key_reference
from cyxwiz.pki.certs import Role, is_ca, load_certificate, write_certificate, write_crl
from cyxwiz.pki.keys import generate_ed25519, require_ed25519_public, write_private_key
from cyxwiz.pki.verify import describe

CERT_FILE = "ca-cert.pem"
KEY_FILE = "ca-key.pem"
DEFAULT_CRL_DAYS = 7


@dataclass(frozen=True, kw_only=True)
class IssuedCertificate:
    certificate: x509.Certificate
    #: The generated key; None when the caller supplied the public key (CSR flow, key stays on the node).
    private_key: ed25519.Ed25519PrivateKey | None


@dataclass(frozen=True, kw_only=True)
class Revocation:
    serial: int
    reason: x509.ReasonFlags
    revoked_at: dt.datetime
    subject: str = ""


def parse_reason(value: str | x509.ReasonFlags) -> x509.ReasonFlags:
    """Accept RFC 5280 names in any spelling: keyCompromise, key-compromise, key_compromise."""
    if isinstance(value, x509.ReasonFlags):
        return value
    wanted = value.replace("-", "").replace("_", "").lower()
    for flag in x509.ReasonFlags:
        if flag.value.lower() == wanted or flag.name.replace("_", "") == wanted:
            return flag
    allowed = ", ".join(flag.value for flag in x509.ReasonFlags)
    raise ValidationError(f"unknown revocation reason {value!r} (allowed: {allowed})", field="reason")


def _state_stem(cert_path: Path) -> str:
    stem = cert_path.name.removesuffix(".pem").removesuffix(".crt")
    return stem.removesuffix("-cert").removesuffix("_cert") or stem


def create_csr(
    key: ed25519.Ed25519PrivateKey,
    *,
    common_name: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str | profiles.IPAddress] = (),
) -> x509.CertificateSigningRequest:
    """A CSR signed by the node's own key: the key never leaves the node (A1, gen-csr)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(profiles.name(common_name))
    sans: list[x509.GeneralName] = [x509.DNSName(profiles.check_dns_name(n)) for n in dns_names]
    sans += [x509.IPAddress(profiles.parse_ip(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, None)


class CertificateAuthority:
    """An issuing CA backed by ``cert_path``/``key_path`` (key 0600, optionally passphrase-encrypted)."""

    def __init__(
        self,
        *,
        certificate: x509.Certificate,
        private_key: ed25519.Ed25519PrivateKey,
        cert_path: Path,
        key_path: Path | str,
    ) -> None:
        if not is_ca(certificate):
            raise CertificateError(
                "not a CA certificate (basicConstraints CA:TRUE missing)", path=str(cert_path), rule="A1"
            )
        require_ed25519_public(certificate.public_key(), path=str(cert_path))
        if certificate.public_key() != private_key.public_key():
            raise CertificateError(
                "CA certificate and CA key do not belong together", path=str(key_path), rule="A1"
            )
        self.certificate = certificate
        self.private_key = private_key
        self.cert_path = cert_path
        self.key_path = key_path

    # --- loading and creating -----------------------------------------------------------------------

    @classmethod
    def from_files(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        *,
        passphrase: bytes | None = None,
    ) -> CertificateAuthority:
        """``key_path`` is a PKCS#8 file or a ``pkcs11:`` URI of a key in a token (A7)."""
        cert = load_certificate(cert_path)
        source = open_key_source(key_path, passphrase=passphrase)
        return cls(
            certificate=cert,
            private_key=as_private_key(source),
            cert_path=Path(cert_path),
            key_path=key_ref(key_path),
        )

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike[str], *, passphrase: bytes | None = None
    ) -> CertificateAuthority:
        directory = Path(path)
        return cls.from_files(directory / CERT_FILE, key_reference(directory), passphrase=passphrase)

    @classmethod
    def create_root(
        cls,
        *,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        common_name: str,
        organization: str | None = None,
        days: int = profiles.DEFAULT_ROOT_DAYS,
        path_length: int | None = None,
        passphrase: bytes | None = None,
        overwrite: bool = False,
    ) -> CertificateAuthority:
        """A new self-signed root CA; the key is written first (0600), then the certificate (0644)."""
        profiles.check_days(days, leaf=False)
        _refuse_existing(Path(cert_path), overwrite)
        subject = profiles.name(common_name, organization=organization)
        in_token = is_pkcs11_uri(key_path)
        # In a token the key is generated there; a refusal below leaves an unused key there, never a file.
        key = as_private_key(create_key_source(key_path)) if in_token else generate_ed25519()
        cert = checked_certificate(
            profiles.ca_builder(
                subject=subject,
                issuer=subject,
                public_key=key.public_key(),
                issuer_public_key=key.public_key(),
                days=days,
                path_length=path_length,
            ).sign(key, None),
            key.public_key(),
        )
        if not in_token:
            write_private_key(key_path, key, overwrite=overwrite, passphrase=passphrase)
        write_certificate(cert_path, cert, overwrite=overwrite)
        return cls(certificate=cert, private_key=key, cert_path=Path(cert_path), key_path=key_ref(key_path))

    def create_intermediate(
        self,
        *,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        common_name: str,
        organization: str | None = None,
        days: int = profiles.DEFAULT_INTERMEDIATE_DAYS,
        path_length: int | None = 0,
        passphrase: bytes | None = None,
        overwrite: bool = False,
    ) -> CertificateAuthority:
        """A subordinate CA signed by this one (pathlen 0 by default: it issues leaves only)."""
        profiles.check_days(days, leaf=False)
        _refuse_existing(Path(cert_path), overwrite)
        in_token = is_pkcs11_uri(key_path)
        key = as_private_key(create_key_source(key_path)) if in_token else generate_ed25519()
        cert = self.sign_ca(
            key.public_key(),
            subject=profiles.name(common_name, organization=organization),
            days=days,
            path_length=path_length,
        )
        if not in_token:
            write_private_key(key_path, key, overwrite=overwrite, passphrase=passphrase)
        write_certificate(cert_path, cert, overwrite=overwrite)
        return type(self)(
            certificate=cert, private_key=key, cert_path=Path(cert_path), key_path=key_ref(key_path)
        )

    def sign_ca(
        self,
        public_key: ed25519.Ed25519PublicKey,
        *,
        subject: x509.Name,
        days: int,
        path_length: int | None = 0,
    ) -> x509.Certificate:
        """A CA certificate for ``public_key`` under this CA; also how a cross-signature is made (A7)."""
        require_ed25519_public(public_key)
        cert = profiles.ca_builder(
            subject=subject,
            issuer=self.certificate.subject,
            public_key=public_key,
            issuer_public_key=self.private_key.public_key(),
            days=profiles.check_days(days, leaf=False),
            path_length=path_length,
            not_after_cap=self.certificate.not_valid_after_utc,
        ).sign(self.private_key, None)
        return checked_certificate(cert, self.certificate.public_key())

    def cross_sign(
        self,
        other_ca: x509.Certificate,
        *,
        days: int = profiles.DEFAULT_INTERMEDIATE_DAYS,
        path_length: int | None = 0,
    ) -> x509.Certificate:
        """Certify another organisation's CA (same subject and key) so this root's bundle trusts it (A7)."""
        key = require_ed25519_public(other_ca.public_key())
        return self.sign_ca(key, subject=other_ca.subject, days=days, path_length=path_length)

    # --- issuing -----------------------------------------------------------------------------------

    def issue(
        self,
        *,
        common_name: str,
        role: Role | str,
        public_key: ed25519.Ed25519PublicKey | None = None,
        server: bool = False,
        client: bool = True,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str | profiles.IPAddress] = (),
        days: int = profiles.DEFAULT_LEAF_DAYS,
        organization: str | None = None,
        not_before: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """A leaf certificate for a role; generates the key unless ``public_key`` is given.

        ``not_before`` exists so tests can mint not-yet-valid and expired certificates through the same
        code path as real ones.
        """
        parsed_role = profiles.parse_role(role)
        profiles.check_days(days, leaf=True)
        key = None if public_key is not None else generate_ed25519()
        public = public_key if public_key is not None else key.public_key()  # type: ignore[union-attr]
        require_ed25519_public(public)
        cert = profiles.leaf_builder(
            subject=profiles.name(common_name, organization=organization, role=parsed_role),
            issuer=self.certificate,
            public_key=public,
            role=parsed_role,
            server=server,
            client=client,
            dns_names=dns_names,
            ip_addresses=[profiles.parse_ip(ip) for ip in ip_addresses],
            days=days,
            not_before=not_before,
        ).sign(self.private_key, None)
        checked = checked_certificate(cert, self.certificate.public_key())
        return IssuedCertificate(certificate=checked, private_key=key)

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        role: Role | str,
        server: bool = False,
        client: bool = True,
        dns_names: Sequence[str] | None = None,
        ip_addresses: Sequence[str | profiles.IPAddress] | None = None,
        days: int = profiles.DEFAULT_LEAF_DAYS,
    ) -> x509.Certificate:
        """Certify a CSR. Only its CN and SANs are taken; requested extensions (e.g. CA:TRUE) are ignored:
        the CA, not the requester, decides what the certificate may do."""
        if not csr.is_signature_valid:
            raise CertificateError("CSR signature does not verify (not signed by its own key)", rule="A1")
        public = require_ed25519_public(csr.public_key())
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            raise ValidationError("CSR has no common name", field="common_name")
        requested_dns: list[str] = []
        requested_ips: list[profiles.IPAddress] = []
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            requested_dns = list(san.get_values_for_type(x509.DNSName))
            requested_ips = list(san.get_values_for_type(x509.IPAddress))  # type: ignore[arg-type]
        except x509.ExtensionNotFound:
            pass
        return self.issue(
            common_name=str(names[0].value),
            role=role,
            public_key=public,
            server=server,
            client=client,
            dns_names=requested_dns if dns_names is None else dns_names,
            ip_addresses=requested_ips if ip_addresses is None else ip_addresses,
            days=days,
        ).certificate

    # --- revocation ----------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.cert_path.parent

    @property
    def db_path(self) -> Path:
        return self.state_dir / f"{_state_stem(self.cert_path)}.revocations.json"

    @property
    def crl_path(self) -> Path:
        return self.state_dir / f"{_state_stem(self.cert_path)}-crl.pem"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, object]]:
        lock_path = self.state_dir / f".{_state_stem(self.cert_path)}.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read_db()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_db(self) -> dict[str, object]:
        if not self.db_path.exists():
            return {"crl_number": 0, "revoked": []}
        try:
            data = json.loads(self.db_path.read_text())
            assert isinstance(data, dict) and isinstance(data.get("revoked"), list)
        except (ValueError, AssertionError):
            raise CRLError("revocation database is corrupt", path=str(self.db_path), rule="A6") from None
        return data

    def _write_db(self, data: dict[str, object]) -> None:
        blob = json.dumps(data, indent=2, sort_keys=True).encode()
        write_atomic(self.db_path, blob, mode=PUBLIC_MODE, overwrite=True)

    def revocations(self) -> list[Revocation]:
        entries = self._read_db()["revoked"]
        assert isinstance(entries, list)
        return [
            Revocation(
                serial=int(e["serial"], 16),
                reason=x509.ReasonFlags(e["reason"]),
                revoked_at=dt.datetime.fromisoformat(e["revoked_at"]),
                subject=e.get("subject", ""),
            )
            for e in entries
        ]

    def revoke(
        self,
        serial: int | x509.Certificate,
        *,
        reason: str | x509.ReasonFlags = x509.ReasonFlags.unspecified,
        at: dt.datetime | None = None,
    ) -> Revocation:
        """Record a revocation in the CA's database (takes effect with the next :meth:`generate_crl`).

        Given a certificate, it must be one this CA issued. Revoking twice is a ConflictError.
        """
        subject = ""
        if isinstance(serial, x509.Certificate):
            try:
                serial.verify_directly_issued_by(self.certificate)
            except Exception:
                raise CertificateError(
                    f"certificate {describe(serial)} was not issued by this CA", rule="A6"
                ) from None
            subject = serial.subject.rfc4514_string()
            serial = serial.serial_number
        flag = parse_reason(reason)
        when = at or dt.datetime.now(dt.UTC)
        with self._locked() as db:
            entries = db["revoked"]
            assert isinstance(entries, list)
            if any(int(e["serial"], 16) == serial for e in entries):
                raise ConflictError(f"serial {serial:x} is already revoked", field="serial", rule="A6")
            entries.append(
                {
                    "serial": f"{serial:x}",
                    "reason": flag.value,
                    "revoked_at": when.isoformat(),
                    "subject": subject,
                }
            )
            self._write_db(db)
        return Revocation(serial=serial, reason=flag, revoked_at=when, subject=subject)

    def generate_crl(
        self, *, days: int = DEFAULT_CRL_DAYS, now: dt.datetime | None = None, write: bool = True
    ) -> x509.CertificateRevocationList:
        """Sign a CRL of every recorded revocation, nextUpdate = now + days; written to :attr:`crl_path`."""
        if not 1 <= days <= 366:
            raise ValidationError("CRL validity must be 1..366 days", field="days", rule="A6")
        start = now or dt.datetime.now(dt.UTC)
        with self._locked() as db:
            number = int(str(db.get("crl_number", 0))) + 1
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(self.certificate.subject)
                .last_update(start - profiles.BACKDATE)
                .next_update(start + dt.timedelta(days=days))
                .add_extension(x509.CRLNumber(number), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                    critical=False,
                )
            )
            for entry in self.revocations():
                revoked = (
                    x509.RevokedCertificateBuilder()
                    .serial_number(entry.serial)
                    .revocation_date(entry.revoked_at)
                )
                # RFC 5280 5.3.1: "unspecified" should be expressed by leaving the reason code out.
                if entry.reason is not x509.ReasonFlags.unspecified:
                    revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
                builder = builder.add_revoked_certificate(revoked.build())
            crl = builder.sign(self.private_key, None)
            if not crl.is_signature_valid(self.certificate.public_key()):  # type: ignore[arg-type]
                raise CRLError("the CA key source produced a CRL signature that does not verify", rule="A7")
            if write:
                db["crl_number"] = number
                self._write_db(db)
                write_crl(self.crl_path, crl)
        return crl


def _refuse_existing(path: Path, overwrite: bool) -> None:
    # Checked before the key is written so a refusal leaves nothing half-created.
    if path.exists() and not overwrite:
        raise ConflictError(
            "refusing to overwrite an existing file", path=str(path), rule="A4", hint="pass --force"
        )
