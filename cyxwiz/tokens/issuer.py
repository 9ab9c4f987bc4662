"""Token issuance (SPEC B1–B5): one method per kind, each producing a token the verifier accepts.

Every token carries ``kid`` and its kind's ``typ`` in the header, and iss/sub/aud/iat/nbf/exp/jti/scope/role
plus the ids its kind requires. Node tokens are bound to the node certificate (``cnf.x5t#S256``). The
claims are run through the verifier's own checks before signing, so bad input fails here with a
:class:`~cyxwiz.errors.ValidationError` naming the field, and no malformed token ever leaves the issuer.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt

from cyxwiz.authz.roles import JOB_TOKEN_SCOPES, Permission, default_scopes
from cyxwiz.errors import TokenError, ValidationError
from cyxwiz.tokens import _audit
from cyxwiz.tokens.binding import PeerCert, cnf_claim
from cyxwiz.tokens.claims import validate_claims
from cyxwiz.tokens.keyring import KeyRing, utcnow
from cyxwiz.tokens.kinds import DEFAULT_JOB_MARGIN, TokenKind

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink


@dataclass(frozen=True, kw_only=True)
class IssuedToken:
    """A freshly minted token. ``repr`` leaves the token out so it never lands in a log by accident."""

    token: str = field(repr=False)
    kind: TokenKind
    jti: str
    kid: str
    subject: str
    expires_at: datetime
    claims: Mapping[str, Any] = field(repr=False)


class TokenIssuer:
    """Mints tokens with the ring's current signing key. Thread-safe."""

    def __init__(
        self,
        *,
        keyring: KeyRing,
        issuer: str,
        audience: str,
        clock: Callable[[], datetime] = utcnow,
        audit: AuditSink | None = None,
    ) -> None:
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.clock = clock
        self.audit = audit

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, audit: AuditSink | None = None, **options: Any
    ) -> TokenIssuer:
        """Keys from :meth:`KeyRing.from_env`; ``CYXWIZ_TOKEN_ISSUER`` and ``CYXWIZ_TOKEN_AUDIENCE``
        (first entry) name the issuer and the default audience."""
        env = os.environ if env is None else env
        audience = env.get("CYXWIZ_TOKEN_AUDIENCE", "cyxwiz-api").split(",")[0].strip()
        return cls(
            keyring=KeyRing.from_env(env),
            issuer=env.get("CYXWIZ_TOKEN_ISSUER", "cyxwiz-coordinator"),
            audience=audience,
            audit=audit,
            **options,
        )

    # -- per kind --------------------------------------------------------------------------------

    def session(
        self,
        *,
        user_id: str | None = None,
        node_id: str | None = None,
        role: str | None = None,
        scopes: Sequence[str] | None = None,
        session_id: str | None = None,
        cert: PeerCert | None = None,
        audience: str | None = None,
        lifetime: timedelta | None = None,
    ) -> IssuedToken:
        """A session token (24 h). Nodes must pass their certificate: the token is bound to it (B5)."""
        role = role or ("node" if node_id is not None else "user")
        return self.issue(
            TokenKind.SESSION,
            subject=node_id if node_id is not None else user_id or "",
            role=role,
            scopes=default_scopes(role) if scopes is None else scopes,
            user_id=user_id,
            node_id=node_id,
            session_id=session_id or new_id(),
            cert=cert,
            audience=audience,
            lifetime=lifetime,
        )

    def job(
        self,
        *,
        node_id: str,
        job_id: str,
        cert: PeerCert,
        duration: timedelta,
        margin: timedelta = DEFAULT_JOB_MARGIN,
        scopes: Sequence[str] = JOB_TOKEN_SCOPES,
        audience: str | None = None,
    ) -> IssuedToken:
        """A job token for the node the job is assigned to: lifetime = job duration + margin (B2)."""
        if duration <= timedelta(0) or margin < timedelta(0):
            raise ValidationError("job duration must be positive", field="duration", rule="B2")
        return self.issue(
            TokenKind.JOB,
            subject=node_id,
            role="node",
            scopes=scopes,
            node_id=node_id,
            job_id=job_id,
            cert=cert,
            audience=audience,
            lifetime=duration + margin,
        )

    def p2p(
        self,
        *,
        subject: str,
        node_id: str,
        role: str = "user",
        user_id: str | None = None,
        job_id: str | None = None,
        cert: PeerCert | None = None,
        scopes: Sequence[str] = (Permission.P2P_CONNECT.value,),
        lifetime: timedelta | None = None,
    ) -> IssuedToken:
        """A one-shot p2p token (1 h) letting ``subject`` talk to node ``node_id`` directly.

        The audience is that node, so the token is worthless at any other node or at the API."""
        return self.issue(
            TokenKind.P2P,
            subject=subject,
            role=role,
            scopes=scopes,
            user_id=user_id,
            node_id=node_id,
            job_id=job_id,
            cert=cert,
            audience=node_id,
            lifetime=lifetime,
        )

    def refresh(
        self,
        *,
        session_id: str,
        user_id: str | None = None,
        node_id: str | None = None,
        role: str | None = None,
        scopes: Sequence[str] = (),
        cert: PeerCert | None = None,
    ) -> IssuedToken:
        """A refresh token (7 d). Its audience is the issuer itself: only the token endpoint takes it.

        Use :class:`cyxwiz.tokens.refresh.SessionManager`, which also records it in its family."""
        role = role or ("node" if node_id is not None else "user")
        return self.issue(
            TokenKind.REFRESH,
            subject=node_id if node_id is not None else user_id or "",
            role=role,
            scopes=scopes,
            user_id=user_id,
            node_id=node_id,
            session_id=session_id,
            cert=cert,
            audience=self.issuer,
        )

    # -- generic ---------------------------------------------------------------------------------

    def issue(
        self,
        kind: TokenKind,
        *,
        subject: str,
        role: str,
        scopes: Sequence[str],
        audience: str | None = None,
        lifetime: timedelta | None = None,
        user_id: str | None = None,
        node_id: str | None = None,
        session_id: str | None = None,
        job_id: str | None = None,
        cert: PeerCert | None = None,
    ) -> IssuedToken:
        lifetime = kind.spec.default_lifetime if lifetime is None else lifetime
        if not timedelta(0) < lifetime <= self.keyring.max_token_lifetime:
            raise ValidationError(
                f"lifetime must be positive and at most {self.keyring.max_token_lifetime}",
                field="lifetime",
                rule="B2",
            )
        now = int(self.clock().timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime.total_seconds()),
            "jti": new_id(),
            "scope": list(scopes),
            "role": role,
        }
        for name, value in (("user_id", user_id), ("node_id", node_id), ("session_id", session_id)):
            if value is not None:
                claims[name] = value
        if job_id is not None:
            claims["job_id"] = job_id
        if cert is not None:
            claims["cnf"] = cnf_claim(cert)
        key = self.keyring.signing_key
        try:
            validate_claims(
                claims,
                kind=kind,
                kid=key.kid,
                issuer=self.issuer,
                audiences=frozenset([claims["aud"]]),
                now=self.clock(),
                leeway=timedelta(0),
                max_lifetime=self.keyring.max_token_lifetime,
            )
        except TokenError as exc:
            raise ValidationError(exc.message, field=exc.field, rule=exc.rule) from None
        token = jwt.encode(
            claims, key.signing_material(), algorithm=key.alg, headers={"kid": key.kid, "typ": kind.typ}
        )
        issued = IssuedToken(
            token=token,
            kind=kind,
            jti=claims["jti"],
            kid=key.kid,
            subject=subject,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            claims=MappingProxyType(claims),
        )
        _audit.token_issued(self.audit, issued, issuer=self.issuer, audience=claims["aud"])
        return issued


def new_id() -> str:
    """128 random bits as hex: jti and session ids (hex always starts alphanumeric, unlike base64url)."""
    return secrets.token_hex(16)
