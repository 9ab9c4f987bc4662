"""Claim validation (SPEC B1) and the verified view of a token.

PyJWT's ``require`` only checks that a claim is present; here every claim's *value* is checked too
(type, shape, consistency with the kind and the role), and each refusal names the claim and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from cyxwiz.errors import TokenExpiredError
from cyxwiz.tokens.binding import CNF_MEMBER
from cyxwiz.tokens.errors import TokenClaimError, TokenNotYetValidError
from cyxwiz.tokens.kinds import TokenKind

ROLES = frozenset({"user", "node", "admin"})
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")  # no "/": ids end up in keys and paths
_SCOPE_RE = re.compile(r"[a-z0-9][a-z0-9:._*-]{0,63}")
_JTI_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
MAX_SCOPES = 64


@dataclass(frozen=True, kw_only=True)
class VerifiedToken:
    """A token whose signature, kind, claims, binding and replay status were all checked."""

    kind: TokenKind
    kid: str
    issuer: str
    subject: str
    audience: tuple[str, ...]
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    jti: str
    scopes: frozenset[str]
    role: str
    user_id: str | None = None
    node_id: str | None = None
    session_id: str | None = None
    job_id: str | None = None
    cert_thumbprint: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def _fail(name: str, message: str, rule: str = "B1") -> TokenClaimError:
    return TokenClaimError(message, field=name, rule=rule)


def _str_id(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise _fail(name, "must be an identifier (1-128 of A-Z a-z 0-9 . _ : @ + = -, starting alphanumeric)")
    return value


def _int_time(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    # bool is an int subclass; a float/str time is a sign of a foreign or tampered issuer.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(name, "must be a NumericDate (integer seconds)")
    return value


def _check_standard(claims: Mapping[str, Any], *, issuer: str, audiences: frozenset[str]) -> tuple[str, ...]:
    if claims["iss"] != issuer:
        raise _fail("iss", "issuer is not trusted here")
    aud = claims["aud"]
    aud_list = (aud,) if isinstance(aud, str) else aud
    if (
        not isinstance(aud_list, list | tuple)
        or not aud_list
        or not all(isinstance(a, str) for a in aud_list)
    ):
        raise _fail("aud", "must be a string or a non-empty list of strings")
    if audiences.isdisjoint(aud_list):
        raise _fail("aud", "token is not meant for this audience")
    if not isinstance(claims["sub"], str) or not _ID_RE.fullmatch(claims["sub"]):
        raise _fail("sub", "must be an identifier string")
    if not isinstance(claims["jti"], str) or not _JTI_RE.fullmatch(claims["jti"]):
        raise _fail("jti", "must be 16-128 base64url characters")
    scope = claims["scope"]
    if (
        not isinstance(scope, list)
        or len(scope) > MAX_SCOPES
        or not all(isinstance(s, str) and _SCOPE_RE.fullmatch(s) for s in scope)
    ):
        raise _fail("scope", "must be a list of scope strings")
    if claims["role"] not in ROLES:
        raise _fail("role", "must be one of user, node, admin", rule="C1")
    return tuple(aud_list)


def _check_times(
    claims: Mapping[str, Any], *, now: datetime, leeway: timedelta, max_lifetime: timedelta
) -> tuple[int, int, int]:
    iat, nbf, exp = _int_time(claims, "iat"), _int_time(claims, "nbf"), _int_time(claims, "exp")
    now_s, skew = now.timestamp(), leeway.total_seconds()
    if not iat <= nbf < exp:
        raise _fail("exp", "times must satisfy iat <= nbf < exp")
    if exp - iat > max_lifetime.total_seconds():
        raise _fail("exp", f"lifetime exceeds {max_lifetime}", rule="B2")
    if now_s >= exp + skew:
        raise TokenExpiredError("token has expired", field="exp", rule="B2")
    if nbf > now_s + skew:
        raise TokenNotYetValidError("token is not valid yet", field="nbf", rule="B1")
    if iat > now_s + skew:
        raise TokenNotYetValidError("token was issued in the future", field="iat", rule="B1")
    return iat, nbf, exp


def _check_principal(claims: Mapping[str, Any], kind: TokenKind) -> dict[str, str | None]:
    spec = kind.spec
    ids = {name: _str_id(claims, name) for name in ("user_id", "node_id", "session_id", "job_id")}
    present = {name for name in spec.principal if ids[name] is not None}
    if spec.exclusive_principal and len(present) != 1:
        raise _fail("/".join(sorted(spec.principal)), "exactly one principal id is required")
    if not spec.exclusive_principal and present != spec.principal:
        raise _fail(",".join(sorted(spec.principal - present)), "required claim missing")
    # The role follows from the principal: a node token cannot claim to be an admin and vice versa.
    if kind is not TokenKind.P2P:
        expected_sub = ids["node_id"] if ids["node_id"] is not None else ids["user_id"]
        if claims["sub"] != expected_sub:
            raise _fail("sub", "must equal the principal id (node_id or user_id)")
        if (ids["node_id"] is not None) != (claims["role"] == "node"):
            raise _fail("role", "role 'node' goes with node_id and only with it", rule="C1")
    return ids


def _check_cnf(claims: Mapping[str, Any], kind: TokenKind) -> str | None:
    if "cnf" not in claims:
        if kind.spec.bound_when_node and claims["role"] == "node":
            raise _fail("cnf", "node tokens must be bound to the node certificate", rule="B5")
        return None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict) or set(cnf) != {CNF_MEMBER} or not isinstance(cnf[CNF_MEMBER], str):
        raise _fail("cnf", f"must be {{{CNF_MEMBER!r}: thumbprint}}", rule="B5")
    return str(cnf[CNF_MEMBER])


def validate_claims(
    claims: Mapping[str, Any],
    *,
    kind: TokenKind,
    kid: str,
    issuer: str,
    audiences: frozenset[str],
    now: datetime,
    leeway: timedelta,
    max_lifetime: timedelta,
) -> VerifiedToken:
    """Check every claim of a signature-verified payload; raise a TokenError subclass naming the claim."""
    for name in sorted(kind.spec.required):
        if name not in claims:
            raise _fail(name, f"required claim missing for a {kind.value} token")
    audience = _check_standard(claims, issuer=issuer, audiences=audiences)
    iat, nbf, exp = _check_times(claims, now=now, leeway=leeway, max_lifetime=max_lifetime)
    ids = _check_principal(claims, kind)
    thumb = _check_cnf(claims, kind)
    return VerifiedToken(
        kind=kind,
        kid=kid,
        issuer=issuer,
        subject=claims["sub"],
        audience=audience,
        issued_at=datetime.fromtimestamp(iat, UTC),
        not_before=datetime.fromtimestamp(nbf, UTC),
        expires_at=datetime.fromtimestamp(exp, UTC),
        jti=claims["jti"],
        scopes=frozenset(claims["scope"]),
        role=claims["role"],
        user_id=ids["user_id"],
        node_id=ids["node_id"],
        session_id=ids["session_id"],
        job_id=ids["job_id"],
        cert_thumbprint=thumb,
        claims=MappingProxyType(dict(claims)),
    )
