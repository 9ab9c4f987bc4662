"""Certificate profiles: which extensions a root, an intermediate and a leaf carry (SPEC A1–A3).

Kept apart from :mod:`cyxwiz.pki.ca` so the rules are readable in one place. Every certificate is
standard X.509 (no libp2p extensions, A2); a leaf's role is its subject OU plus a SAN URI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cyxwiz.errors import ValidationError
from cyxwiz.pki.certs import ROLE_URI_PREFIX, Role

#: A3: node certificates at most a year by default (90 days recommended); CAs longer.
MAX_LEAF_DAYS = 365
DEFAULT_LEAF_DAYS = 90
MAX_CA_DAYS = 20 * 365
DEFAULT_ROOT_DAYS = 10 * 365
DEFAULT_INTERMEDIATE_DAYS = 5 * 365
#: Issued certificates start a little in the past so a peer whose clock lags slightly accepts them.
BACKDATE = dt.timedelta(minutes=5)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_role(value: str | Role) -> Role:
    try:
        return Role(str(value).strip().lower())
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValidationError(
            f"unknown role {value!r} (allowed: {allowed})", field="role", rule="A1"
        ) from None


def parse_ip(value: str | IPAddress) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValidationError(f"not an IP address: {value!r}", field="ip") from None


def check_dns_name(name: str) -> str:
    """A DNS SAN: ASCII labels, optional leading wildcard label; refuse anything a parser could misread."""
    text = name.strip().lower().rstrip(".")
    labels = text.split(".")
    ok = bool(text) and len(text) <= 253
    for index, label in enumerate(labels):
        if label == "*" and index == 0 and len(labels) > 2:
            continue
        ok = ok and 0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        ok = ok and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    if not ok:
        raise ValidationError(f"not a valid DNS name: {name!r}", field="dns")
    return text


def check_days(days: int, *, leaf: bool) -> int:
    limit = MAX_LEAF_DAYS if leaf else MAX_CA_DAYS
    if not 1 <= days <= limit:
        kind = "leaf certificates" if leaf else "CA certificates"
        raise ValidationError(f"{kind} must be valid 1..{limit} days, not {days}", field="days", rule="A3")
    return days


def name(common_name: str, *, organization: str | None = None, role: Role | None = None) -> x509.Name:
    if not common_name.strip():
        raise ValidationError("common name must not be empty", field="common_name")
    if len(common_name) > 64:
        raise ValidationError("common name longer than 64 characters", field="common_name")
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if role is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _window(not_before: dt.datetime | None, days: int) -> tuple[dt.datetime, dt.datetime]:
    start = not_before or (dt.datetime.now(dt.UTC) - BACKDATE)
    return start, start + dt.timedelta(days=days) + (BACKDATE if not_before is None else dt.timedelta())


def ca_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ed25519.Ed25519PublicKey,
    issuer_public_key: ed25519.Ed25519PublicKey,
    days: int,
    path_length: int | None,
    not_before: dt.datetime | None = None,
    not_after_cap: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    start, end = _window(not_before, days)
    if not_after_cap is not None:
        end = min(end, not_after_cap)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
    )


def leaf_builder(
    *,
    subject: x509.Name,
    issuer: x509.Certificate,
    public_key: ed25519.Ed25519PublicKey,
    role: Role,
    server: bool,
    client: bool,
    dns_names: Sequence[str],
    ip_addresses: Sequence[IPAddress],
    days: int,
    not_before: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    if not (server or client):
        raise ValidationError("a certificate needs server and/or client usage", field="usage", rule="A1")
    start, end = _window(not_before, days)
    # A leaf never outlives its issuer: the chain would break first anyway, and openssl warns about it.
    end = min(end, issuer.not_valid_after_utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    sans: list[x509.GeneralName] = [x509.DNSName(check_dns_name(n)) for n in dns_names]
    sans += [x509.IPAddress(ip) for ip in ip_addresses]
    sans.append(x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role.value))
    issuer_key = issuer.public_key()
    assert isinstance(issuer_key, ed25519.Ed25519PublicKey)  # checked when the CA was loaded
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
    )
