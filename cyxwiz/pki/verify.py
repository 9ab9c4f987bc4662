"""Certificate chain verification for Ed25519 PKIs (SPEC A2, A3, A6, A7).

``cryptography``'s ``x509.verification`` refuses Ed25519 chains and never checks revocation, so the
checks are done here from primitives: a path is built leaf → trusted root with
``verify_directly_issued_by`` (so multi-root bundles and cross-signed intermediates work, A7), then every
link is checked for validity window, key type, basic constraints + path length, key usage, the leaf for
EKU, and every issued certificate against the CRLs of its issuer. On the wire OpenSSL (``ssl``) does
the same job; the tests hold both to the same answers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cyxwiz.errors import (
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    CertificateUsageError,
    ChainError,
    CRLError,
    PKIError,
    SelfSignedCertificateError,
)
from cyxwiz.pki.certs import is_ca, is_self_issued, is_self_signed
from cyxwiz.pki.keys import require_ed25519_public

Purpose = Literal["server", "client"]
_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
#: Longest chain we try to build; real ones are 2–4 long, this only bounds hostile bundles.
_MAX_DEPTH = 8


def describe(cert: x509.Certificate) -> str:
    """Subject and serial, for error messages and logs (A5 asks for the subject in logs)."""
    return f"'{cert.subject.rfc4514_string()}' (serial {cert.serial_number:x})"


def _now(at: dt.datetime | None) -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.UTC)
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def check_validity(cert: x509.Certificate, at: dt.datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise CertificateNotYetValidError(
            f"certificate {describe(cert)} is not valid before {cert.not_valid_before_utc.isoformat()}",
            rule="A3",
        )
    if at > cert.not_valid_after_utc:
        raise CertificateExpiredError(
            f"certificate {describe(cert)} expired at {cert.not_valid_after_utc.isoformat()}", rule="A3"
        )


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def check_leaf(cert: x509.Certificate, *, purpose: Purpose | None) -> None:
    """Rules for the end-entity certificate itself: Ed25519, not a CA, not self-signed, usage fits."""
    require_ed25519_public(cert.public_key())
    if is_ca(cert):
        raise CertificateUsageError(
            f"CA certificate {describe(cert)} used as a leaf (basicConstraints CA:TRUE)", rule="A3"
        )
    if is_self_signed(cert):
        raise SelfSignedCertificateError(
            f"self-signed leaf certificate {describe(cert)} refused: leaves must be CA-signed",
            rule="A3",
            hint="issue it from a CA: cyxwiz certutil gen-cert --ca-cert ... --ca-key ...",
        )
    usage = _ext(cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        raise CertificateUsageError(f"leaf {describe(cert)} lacks keyUsage digitalSignature", rule="A1")
    if purpose is not None:
        eku = _ext(cert, x509.ExtendedKeyUsage)
        wanted = _EKU[purpose]
        if not isinstance(eku, x509.ExtendedKeyUsage) or wanted not in eku:
            raise CertificateUsageError(
                f"certificate {describe(cert)} is not valid for TLS {purpose} use (extendedKeyUsage)",
                rule="A1",
            )


def _check_issuer(issuer: x509.Certificate, *, intermediates_below: int) -> None:
    """Rules for a certificate acting as a CA at this point of the path."""
    require_ed25519_public(issuer.public_key())
    constraints = _ext(issuer, x509.BasicConstraints)
    if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
        raise CertificateUsageError(
            f"issuer {describe(issuer)} is not a CA (basicConstraints CA:TRUE missing)", rule="A1"
        )
    if constraints.path_length is not None and intermediates_below > constraints.path_length:
        raise ChainError(
            f"path length constraint of {describe(issuer)} exceeded "
            f"({intermediates_below} > pathlen {constraints.path_length})",
            rule="A1",
        )
    usage = _ext(issuer, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
        raise CertificateUsageError(f"issuer {describe(issuer)} lacks keyUsage keyCertSign", rule="A1")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # ValueError (name), InvalidSignature, TypeError (key type)
        return False
    return True


def build_chain(
    cert: x509.Certificate,
    *,
    trusted: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    at: dt.datetime,
) -> list[x509.Certificate]:
    """A path leaf → self-signed trusted root whose every CA link passes :func:`_check_issuer`.

    Depth-first over all candidates, so a bundle with several roots or a cross-signed intermediate
    finds whichever path works; if none does, the first failure met is raised (the most telling one).
    """
    anchors = [c for c in trusted if is_self_signed(c)]
    pool: list[x509.Certificate] = []
    for candidate in [*intermediates, *trusted]:
        if candidate not in pool:
            pool.append(candidate)
    failures: list[PKIError] = []

    def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        current = path[-1]
        if current in anchors:
            return path
        if len(path) > _MAX_DEPTH:
            failures.append(ChainError(f"chain longer than {_MAX_DEPTH} certificates", rule="A1"))
            return None
        named = [c for c in pool if c.subject == current.issuer and c not in path]
        for issuer in named:
            if not _signed_by(current, issuer):
                failures.append(
                    ChainError(
                        f"signature of {describe(current)} does not verify with {describe(issuer)}",
                        rule="A3",
                    )
                )
                continue
            below = sum(1 for c in path[1:] if not is_self_issued(c))
            try:
                _check_issuer(issuer, intermediates_below=below)
                check_validity(issuer, at)
            except PKIError as exc:
                failures.append(exc)
                continue
            found = extend([*path, issuer])
            if found is not None:
                return found
        if not named:
            failures.append(
                ChainError(
                    f"issuer '{current.issuer.rfc4514_string()}' of {describe(current)} "
                    "is not in the trust bundle",
                    rule="A3",
                    hint="the bundle must hold the intermediates and the root (cyxwiz certutil bundle)",
                )
            )
        return None

    chain = extend([cert])
    if chain is None:
        raise failures[0] if failures else ChainError("no path to a trusted root", rule="A3")
    return chain


def _crls_of(
    issuer: x509.Certificate, crls: Sequence[x509.CertificateRevocationList]
) -> list[x509.CertificateRevocationList]:
    found = []
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        public = issuer.public_key()
        try:
            valid = crl.is_signature_valid(public)  # type: ignore[arg-type]
        except Exception:
            valid = False
        if not valid:
            raise CRLError(f"CRL of '{crl.issuer.rfc4514_string()}' is not signed by its CA", rule="A6")
        found.append(crl)
    return found


def check_revocation(
    chain: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    *,
    at: dt.datetime,
    require_leaf_crl: bool = True,
) -> None:
    """Every issued certificate of the chain against the CRLs of its issuer (A6).

    A CRL past its nextUpdate fails closed (the default policy of A6). With CRLs supplied, the leaf's
    issuer must have one — as ``openssl verify -crl_check`` demands — so a missing CRL is not silently
    taken for "nothing revoked".
    """
    for index, cert in enumerate(chain[:-1]):
        issuer = chain[index + 1]
        own = _crls_of(issuer, crls)
        if not own and index == 0 and require_leaf_crl and crls:
            raise CRLError(f"no CRL from issuer {describe(issuer)} among the CRLs given", rule="A6")
        for crl in own:
            if crl.last_update_utc > at:
                raise CRLError(f"CRL of {describe(issuer)} is not valid yet", rule="A6")
            if crl.next_update_utc is None or crl.next_update_utc < at:
                raise CRLError(
                    f"CRL of {describe(issuer)} is past its nextUpdate "
                    f"({crl.next_update_utc.isoformat() if crl.next_update_utc else 'none'}): failing closed",
                    rule="A6",
                    hint="regenerate it: cyxwiz certutil gen-crl",
                )
            revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None:
                reason = "unspecified"
                with contextlib.suppress(x509.ExtensionNotFound):
                    reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
                raise CertificateRevokedError(
                    f"certificate {describe(cert)} was revoked at "
                    f"{revoked.revocation_date_utc.isoformat()} (reason: {reason})",
                    rule="A6",
                )


def verify_certificate(
    cert: x509.Certificate,
    *,
    trusted: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    crls: Sequence[x509.CertificateRevocationList] = (),
    at: dt.datetime | None = None,
    purpose: Purpose | None = None,
) -> list[x509.Certificate]:
    """Verify ``cert`` and return its chain leaf → root.

    ``trusted`` is the CA bundle: its self-signed certificates are the trust anchors, the others serve
    as intermediates (Hypha's bundle = intermediates + roots). Raises SelfSignedCertificateError,
    CertificateUsageError, CertificateExpiredError/NotYetValidError, ChainError, CertificateRevokedError,
    CRLError, or KeyTypeError for a non-Ed25519 certificate.
    """
    if purpose is not None and purpose not in _EKU:
        raise CertificateError(f"unknown purpose {purpose!r}", field="purpose")
    when = _now(at)
    check_leaf(cert, purpose=purpose)
    check_validity(cert, when)
    chain = build_chain(cert, trusted=trusted, intermediates=intermediates, at=when)
    check_revocation(chain, crls, at=when)
    return chain
