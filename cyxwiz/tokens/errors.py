"""Finer token refusals (SPEC B), all below :class:`cyxwiz.errors.TokenError` so one ``except`` catches them.

Every class maps to HTTP 401 through its base. The ``code`` differs so logs, audit details and
problem+json bodies say exactly which rule refused the token, without ever echoing the token itself.
"""

from __future__ import annotations

from cyxwiz.errors import TokenError, TokenExpiredError, TokenReplayError


class TokenFormatError(TokenError):
    """Not a compact JWS, bad base64url/JSON, duplicate claims, oversized, or an unsupported header."""

    code = "token-format"


class TokenAlgorithmError(TokenError):
    """``alg`` is not on the allow-list or does not match the key named by ``kid`` (B3, RFC 8725 §3.1)."""

    code = "token-algorithm"


class UnknownKeyError(TokenError):
    """``kid`` is missing, malformed or not in the key ring (B4)."""

    code = "token-unknown-key"


class TokenSignatureError(TokenError):
    """The signature does not verify with the key named by ``kid``."""

    code = "token-signature"


class TokenTypeError(TokenError):
    """The header ``typ`` names another token kind (B1, RFC 8725 §3.11)."""

    code = "token-type"


class TokenClaimError(TokenError):
    """A required claim is missing or has a wrong value (iss, aud, sub, scope, ids...)."""

    code = "token-claim"


class TokenNotYetValidError(TokenError):
    """``nbf`` (or ``iat``) lies in the future beyond the allowed clock skew."""

    code = "token-not-yet-valid"


class RefreshReuseError(TokenReplayError):
    """A refresh token was used twice: its whole family is now revoked (B5)."""

    code = "token-refresh-reuse"


class TokenRevokedError(TokenError):
    """The token's refresh family / session was revoked."""

    code = "token-revoked"


__all__ = [
    "RefreshReuseError",
    "TokenAlgorithmError",
    "TokenClaimError",
    "TokenExpiredError",
    "TokenFormatError",
    "TokenNotYetValidError",
    "TokenReplayError",
    "TokenRevokedError",
    "TokenSignatureError",
    "TokenTypeError",
    "UnknownKeyError",
]
