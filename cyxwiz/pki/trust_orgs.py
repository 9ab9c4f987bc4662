"""The organizations of a federation trust policy: what each holds, its CRLs (SPEC A7, C1).

Parsing of one ``organizations:`` entry of the policy file (see :mod:`cyxwiz.pki.trust_policy`), the CAs an
organization *holds* (its roots and what chains to them inside its own bundle), and the loading of its CRL
file, checked on its own so that a bad file refuses only that organization's nodes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cyxwiz.errors import ConfigError, PKIError
from cyxwiz.pki.certs import (
    ROLE_URI_PREFIX,
    Role,
    common_name,
    dns_names,
    is_ca,
    is_self_signed,
    load_certificates,
)
from cyxwiz.pki.keys import require_ed25519_public
from cyxwiz.pki.verify import _signed_by, describe


def raw_key(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, kw_only=True)
class Organization:
    name: str
    roots: tuple[x509.Certificate, ...]
    cas: tuple[x509.Certificate, ...]  # roots, intermediates and cross-certificates (the path pool)
    #: The CAs this organization certifies itself: its roots and what chains to them inside its bundle.
    #: Only these count as its keys (a foreign CA copied into its bundle gives it no say over that CA).
    held: tuple[x509.Certificate, ...]
    roles: frozenset[Role]
    names: tuple[str, ...] = ()
    crl_path: Path | None = None
    #: Where the organization publishes its CRL file (http/https); ``cyxwiz certutil fetch-crls`` copies
    #: it to ``crl_path`` after checking it, and the listeners hot-reload it from there.
    crl_url: str | None = None

    def holds_key(self, key: bytes) -> bool:
        return any(raw_key(ca) == key for ca in self.held)

    def name_allowed(self, leaf: x509.Certificate) -> bool:
        """Every DNS SAN and the CN inside the constraint; a constrained organization's leaves carry no
        IP, e-mail or other URI names (those the constraint cannot scope), only the role URI."""
        if not self.names:
            return True
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        for general in san:
            if isinstance(general, x509.DNSName):
                continue
            if isinstance(general, x509.UniformResourceIdentifier) and general.value.startswith(
                ROLE_URI_PREFIX
            ):
                continue
            return False
        candidates = [n.lower().rstrip(".") for n in dns_names(leaf)]
        cn = common_name(leaf)
        if cn is not None:
            candidates.append(cn.lower().rstrip("."))
        return all(any(_within(c, rule) for rule in self.names) for c in candidates)


def _within(name: str, rule: str) -> bool:
    rule = rule.lower().rstrip(".")
    if rule.startswith("."):
        return name.endswith(rule) and len(name) > len(rule)
    return name == rule


@dataclass(frozen=True, kw_only=True)
class OrgCRLs:
    """One organization's CRLs as loaded (``error`` set when none are in force for it).

    ``by_signer`` maps the raw public key of the CA that signed each CRL to its CRLs; ``revoked`` and
    ``compromised`` map it to the serials those CRLs revoke (any reason / a reason that ends the key).
    Signatures are checked and entries indexed once at load, so a handshake costs set lookups only.
    """

    crls: tuple[x509.CertificateRevocationList, ...] = ()
    by_signer: Mapping[bytes, tuple[x509.CertificateRevocationList, ...]] = field(default_factory=dict)
    revoked: Mapping[bytes, frozenset[int]] = field(default_factory=dict)
    compromised: Mapping[bytes, frozenset[int]] = field(default_factory=dict)
    error: str | None = None
    #: Per issuer: (CRL number, lastUpdate) of the newest CRL in force, to refuse a rollback.
    last_update: Mapping[str, tuple[int, dt.datetime]] = field(default_factory=dict)

    def stale_reason(self, at: dt.datetime) -> str | None:
        if self.error is not None:
            return self.error
        for crl in self.crls:
            if crl.next_update_utc is None or crl.next_update_utc < at:
                return f"CRL of '{crl.issuer.rfc4514_string()}' is past its nextUpdate: failing closed"
            if crl.last_update_utc > at + dt.timedelta(minutes=5):
                return f"CRL of '{crl.issuer.rfc4514_string()}' is not valid yet"
        return None


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except Exception:
        return False


def load_org_crls(org: Organization, *, previous: OrgCRLs | None = None) -> OrgCRLs:
    """An organization's CRL file: each CRL signed by a CA of its bundle, none older than the one in force.

    Never raises: a missing or bad file gives an :class:`OrgCRLs` with ``error`` set, which refuses that
    organization's nodes and nobody else's.
    """
    from cyxwiz.pki.certs import load_crls

    if org.crl_path is None:
        return OrgCRLs(error="no CRL file configured")
    try:
        crls = load_crls(org.crl_path)
    except PKIError as exc:
        return OrgCRLs(error=f"CRL file unusable: {exc.message}")
    last: dict[str, tuple[int, dt.datetime]] = {}
    by_signer: dict[bytes, list[x509.CertificateRevocationList]] = {}
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        signer = next((ca for ca in org.held if ca.subject == crl.issuer and _crl_signed_by(crl, ca)), None)
        if signer is None:
            return OrgCRLs(error=f"CRL of {issuer!r} is not signed by a CA of {org.name!r}")
        number = _crl_number(crl)
        before = previous.last_update.get(issuer) if previous is not None else None
        if before is not None and (number < before[0] or crl.last_update_utc < before[1]):
            return OrgCRLs(error=f"CRL of {issuer!r} is older than the one in force (rollback refused)")
        last[issuer] = max((number, crl.last_update_utc), last.get(issuer, (number, crl.last_update_utc)))
        by_signer.setdefault(raw_key(signer), []).append(crl)
    revoked: dict[bytes, set[int]] = {}
    compromised: dict[bytes, set[int]] = {}
    for key, signed in by_signer.items():
        for crl in signed:
            for entry in crl:
                revoked.setdefault(key, set()).add(entry.serial_number)
                if _ends_key(entry):
                    compromised.setdefault(key, set()).add(entry.serial_number)
    return OrgCRLs(
        crls=tuple(crls),
        by_signer={k: tuple(v) for k, v in by_signer.items()},
        revoked={k: frozenset(v) for k, v in revoked.items()},
        compromised={k: frozenset(v) for k, v in compromised.items()},
        last_update=last,
    )


#: Revocation reasons that end the key itself, not only the one certificate (RFC 5280 §5.3.1); an entry
#: without a reason counts as one (fail closed).
KEY_ENDING = {x509.ReasonFlags.key_compromise, x509.ReasonFlags.ca_compromise, x509.ReasonFlags.unspecified}


def _ends_key(entry: x509.RevokedCertificate) -> bool:
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return True
    return reason in KEY_ENDING


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _held(cas: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    held = list(roots)
    grew = True
    while grew:
        grew = False
        for ca in cas:
            if ca not in held and any(ca.issuer == p.subject and _signed_by(ca, p) for p in held):
                held.append(ca)
                grew = True
    return tuple(held)


def _crl_url(value: Any, *, where: str, source: str, has_file: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: crl_url must be an http(s) URL", field="crl_url", path=source, rule="A7")
    if not has_file:
        raise ConfigError(f"{where}: crl_url needs a crl file to keep it in", field="crl", path=source)
    return value


def organization_from_entry(entry: Any, *, base: Path, source: str) -> Organization:
    if not isinstance(entry, dict):
        raise ConfigError("each organization must be a mapping", field="organizations", path=source)
    unknown = set(entry) - {"name", "bundle", "crl", "crl_url", "roles", "names"}
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)}", field="organizations", path=source, rule="A7")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("organization needs a name", field="name", path=source)
    where = f"organization {name!r}"
    bundle = entry.get("bundle")
    if not isinstance(bundle, str):
        raise ConfigError(f"{where} needs a bundle file", field="bundle", path=source, rule="A7")
    cas = load_certificates(base / bundle)
    for ca in cas:
        require_ed25519_public(ca.public_key(), path=str(base / bundle))
        if not is_ca(ca):
            raise ConfigError(f"{where}: bundle holds a non-CA {describe(ca)}", field="bundle", path=source)
    roots = tuple(c for c in cas if is_self_signed(c))
    if not roots:
        raise ConfigError(f"{where}: bundle has no self-signed root", field="bundle", path=source, rule="A7")
    roles_raw = entry.get("roles")
    if not isinstance(roles_raw, list) or not roles_raw:
        raise ConfigError(f"{where} needs a non-empty roles list", field="roles", path=source, rule="A7")
    try:
        roles = frozenset(Role(str(r).strip().lower()) for r in roles_raw)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ConfigError(f"{where}: unknown role (allowed: {allowed})", field="roles", path=source) from None
    names = entry.get("names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip(".") for n in names):
        raise ConfigError(f"{where}: names must be a list of DNS names/suffixes", field="names", path=source)
    crl = entry.get("crl")
    if crl is not None and not isinstance(crl, str):
        raise ConfigError(f"{where}: crl must be a file name", field="crl", path=source)
    return Organization(
        name=name.strip(),
        roots=roots,
        cas=tuple(cas),
        held=_held(cas, roots),
        roles=roles,
        names=tuple(n.strip().lower() for n in names),
        crl_path=(base / crl) if crl else None,
        crl_url=_crl_url(entry.get("crl_url"), where=where, source=source, has_file=bool(crl)),
    )
