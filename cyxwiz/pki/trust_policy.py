"""A federation of organizations with scoped trust (SPEC A7, C1).

Each organization runs its own root → issuing CA. The control plane's trust policy lists every trusted
organization with its CA bundle (its root and intermediates, and any cross-certificates it issued), the
roles it may certify, an optional name constraint, and its CRL file::

    version: 1
    organizations:
      - name: orga
        bundle: orga-bundle.pem
        crl: orga-crls.pem
        roles: [gateway, coordinator, scheduler, worker, data, verifier, user]
      - name: orgb
        bundle: orgb-bundle.pem
        crl: orgb-crls.pem
        roles: [worker]            # org B may certify workers, never a verifier
        names: [.orgb.example]     # CN and DNS SANs of its leaves must fall inside

A leaf is accepted when at least one path leads from it to the root of an organization in the policy and
that path passes every rule below; the rules name themselves in the refusal:

* ``A7/chain``   chain signatures, CA constraints, validity (as :mod:`cyxwiz.pki.verify`);
* ``A7/crl``     every link checked against a fresh CRL of its issuer, from the CRL file of an organization
  holding that CA; an organization whose CRL file is missing, unreadable or past nextUpdate has no CRLs
  in force, so every path through its CAs fails (its nodes are refused, the others are not);
* ``A7/revoked-key`` a CA key revoked for compromise (or without a reason) is dead on every path: a
  cross-certificate of the same key elsewhere does not revive it;
* ``A7/role``    the leaf's role must be granted by *every* organization holding a CA key of the path, so a
  cross-signature from a broader organization never widens what org B's own CAs may certify;
* ``A7/names``   likewise for name constraints.

The PeerID stays the identity: the policy decides whether a certificate is accepted, never who it is.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from cyxwiz.errors import CertificateError, ConfigError, PKIError
from cyxwiz.pki.certs import (
    ROLE_URI_PREFIX,
    Role,
    role_of,
)
from cyxwiz.pki.trust_orgs import (
    Organization,
    OrgCRLs,
    load_org_crls,
    organization_from_entry,
    raw_key,
)
from cyxwiz.pki.verify import _check_issuer, _signed_by, check_leaf, check_validity, describe

__all__ = ["Decision", "OrgCRLs", "Organization", "TrustPolicy", "TrustPolicyError", "load_org_crls"]

_MAX_DEPTH = 8


class TrustPolicyError(CertificateError):
    """A certificate the federation's trust policy refuses; ``rule`` names the policy rule."""

    code = "trust-policy"


@dataclass(frozen=True)
class Decision:
    """An accepted certificate: the path used and the organization anchoring it."""

    chain: list[x509.Certificate]
    organization: str


class TrustPolicy:
    """The organizations the control plane trusts and what each may certify."""

    def __init__(self, organizations: Sequence[Organization], *, source: str = "trust policy") -> None:
        names = [o.name for o in organizations]
        if len(set(names)) != len(names):
            raise ConfigError("organization names must be unique", field="organizations", path=source)
        seen: dict[bytes, str] = {}
        for org in organizations:
            for root in org.roots:
                owner = seen.setdefault(raw_key(root), org.name)
                if owner != org.name:
                    raise ConfigError(
                        f"root {describe(root)} is listed for both {owner!r} and {org.name!r}",
                        field="bundle",
                        path=source,
                        rule="A7",
                    )
        self.organizations = tuple(organizations)
        self.source = source

    # --- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrustPolicy:
        import yaml

        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("trust policy file not found", path=str(file), rule="A7") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"unreadable trust policy: {type(exc).__name__}", path=str(file)) from None
        return cls.from_mapping(data, base=file.parent, source=str(file))

    @classmethod
    def from_mapping(cls, data: Any, *, base: Path, source: str = "trust policy") -> TrustPolicy:
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ConfigError("trust policy must be a mapping with version: 1", field="version", path=source)
        unknown = set(data) - {"version", "organizations"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}", field="policy", path=source, rule="A7")
        entries = data.get("organizations")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("organizations must be a non-empty list", field="organizations", path=source)
        return cls(
            [organization_from_entry(entry, base=base, source=source) for entry in entries], source=source
        )

    # --- queries --------------------------------------------------------------------------------

    def organization(self, name: str) -> Organization | None:
        return next((o for o in self.organizations if o.name == name), None)

    def all_cas(self) -> list[x509.Certificate]:
        found: list[x509.Certificate] = []
        for org in self.organizations:
            found.extend(c for c in org.cas if c not in found)
        return found

    def bundle_pem(self) -> bytes:
        """Every CA of every organization: the trust store OpenSSL verifies handshakes against."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.all_cas())

    def load_crls(self, previous: Mapping[str, OrgCRLs] | None = None) -> dict[str, OrgCRLs]:
        """Each organization's CRL file, loaded and checked independently of the others."""
        return {o.name: load_org_crls(o, previous=(previous or {}).get(o.name)) for o in self.organizations}

    # --- the decision ---------------------------------------------------------------------------

    def evaluate(
        self,
        leaf: x509.Certificate,
        *,
        crls: Mapping[str, OrgCRLs],
        at: dt.datetime | None = None,
        purpose: str | None = None,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> Decision:
        """Accept ``leaf`` (returning the path) or raise the refusal of the most telling path."""
        when = at or dt.datetime.now(dt.UTC)
        check_leaf(leaf, purpose=purpose)  # type: ignore[arg-type]
        check_validity(leaf, when)
        paths = list(self._paths(leaf, intermediates=intermediates, at=when))
        if not paths:
            raise TrustPolicyError(
                f"{describe(leaf)} has no valid path to the root of an organization in the trust policy",
                rule="A7/chain",
            )
        dead = self._dead_keys(crls, at=when)
        failures: list[PKIError] = []
        for path in paths:
            try:
                return self._check_path(path, crls=crls, dead=dead, at=when)
            except PKIError as exc:
                failures.append(exc)
        raise failures[0]

    def _orgs_holding(self, path: Sequence[x509.Certificate]) -> list[Organization]:
        keys = {raw_key(c) for c in path[1:]}
        return [o for o in self.organizations if any(o.holds_key(k) for k in keys)]

    def _check_path(
        self,
        path: list[x509.Certificate],
        *,
        crls: Mapping[str, OrgCRLs],
        dead: Mapping[bytes, str],
        at: dt.datetime,
    ) -> Decision:
        leaf, anchor = path[0], path[-1]
        anchor_org = next(o for o in self.organizations if anchor in o.roots)
        holders = self._orgs_holding(path)
        for ca in path[1:]:
            why = dead.get(raw_key(ca))
            if why is not None:
                raise TrustPolicyError(f"CA key of {describe(ca)} {why}", rule="A7/revoked-key")
        for index, cert in enumerate(path[:-1]):
            self._check_link(cert, path[index + 1], crls=crls, at=at)
        role = role_of(leaf)
        claimed = _claimed_roles(leaf)
        if len(claimed) > 1:
            # Different readers could take different roles from one certificate: refuse it outright.
            raise TrustPolicyError(
                f"{describe(leaf)} claims several roles ({', '.join(sorted(claimed))})", rule="A7/role"
            )
        for org in holders:
            if role is None or role not in org.roles:
                allowed = ", ".join(sorted(r.value for r in org.roles))
                raise TrustPolicyError(
                    f"organization {org.name!r} may not certify role {role.value if role else '(none)'!r} "
                    f"for {describe(leaf)} (it may certify: {allowed})",
                    rule="A7/role",
                )
            if not org.name_allowed(leaf):
                raise TrustPolicyError(
                    f"{describe(leaf)} is outside the names organization {org.name!r} may certify "
                    f"({', '.join(org.names)})",
                    rule="A7/names",
                )
        return Decision(chain=path, organization=anchor_org.name)

    def _check_link(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        *,
        crls: Mapping[str, OrgCRLs],
        at: dt.datetime,
    ) -> None:
        key = raw_key(issuer)
        owners = [o for o in self.organizations if o.holds_key(key)]
        found: list[x509.CertificateRevocationList] = []
        unavailable: list[str] = []
        for org in owners:
            state = crls.get(org.name) or OrgCRLs(error="no CRL loaded")
            reason = state.stale_reason(at)
            if reason is not None:
                unavailable.append(f"{org.name}: {reason}")
                continue
            signed = [c for c in state.by_signer.get(key, ()) if c.issuer == issuer.subject]
            found.extend(signed)
            if signed and cert.serial_number in state.revoked.get(key, frozenset()):
                raise TrustPolicyError(
                    f"{describe(cert)} was revoked by {describe(issuer)} (CRL of organization {org.name!r})",
                    rule="A7/crl",
                )
        if not found:
            detail = "; ".join(unavailable) if unavailable else "none published"
            raise TrustPolicyError(
                f"no CRL in force from issuer {describe(issuer)} of {describe(cert)} ({detail})",
                rule="A7/crl",
                hint="each organization publishes a fresh CRL of every CA in its bundle",
            )

    def _dead_keys(self, crls: Mapping[str, OrgCRLs], *, at: dt.datetime) -> dict[bytes, str]:
        """CA keys revoked for compromise (or without reason) by any organization's valid CRL.

        A CRL entry names a CA certificate by issuer and serial; it counts only for a certificate that the
        CRL's own signer issued, so an organization cannot kill another's CA by reusing its issuer name.
        """
        dead: dict[bytes, str] = {}
        everything = self.all_cas()
        for org in self.organizations:
            state = crls.get(org.name)
            if state is None or state.stale_reason(at) is not None:
                continue
            for signer_key, serials in state.compromised.items():
                signer = ed25519.Ed25519PublicKey.from_public_bytes(signer_key)
                for ca in everything:
                    if ca.serial_number in serials and _issued_by_key(ca, signer):
                        dead[raw_key(ca)] = f"was revoked for compromise by organization {org.name!r}"
        return dead

    def _paths(
        self,
        leaf: x509.Certificate,
        *,
        intermediates: Sequence[x509.Certificate],
        at: dt.datetime,
    ) -> Iterator[list[x509.Certificate]]:
        anchors = [r for o in self.organizations for r in o.roots]
        pool = [*intermediates, *self.all_cas()]

        def extend(path: list[x509.Certificate]) -> Iterator[list[x509.Certificate]]:
            current = path[-1]
            if current in anchors:
                yield path
                return
            if len(path) > _MAX_DEPTH:
                return
            for issuer in pool:
                if issuer.subject != current.issuer or issuer in path or not _signed_by(current, issuer):
                    continue
                below = sum(1 for c in path[1:] if c.issuer != c.subject)
                try:
                    _check_issuer(issuer, intermediates_below=below)
                    check_validity(issuer, at)
                except PKIError:
                    continue
                yield from extend([*path, issuer])

        yield from extend([leaf])


def _claimed_roles(leaf: x509.Certificate) -> set[str]:
    """Every role a leaf names, in its SAN URIs and its subject OUs (role_of reads only the first)."""
    claimed: set[str] = set()
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(ROLE_URI_PREFIX):
                claimed.add(uri.removeprefix(ROLE_URI_PREFIX))
    except x509.ExtensionNotFound:
        pass
    for attr in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        if str(attr.value) in {r.value for r in Role}:
            claimed.add(str(attr.value))
    return claimed


def _issued_by_key(cert: x509.Certificate, key: ed25519.Ed25519PublicKey) -> bool:
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        return False
    return True
