"""Token verification (SPEC B1–B5): one call checks everything, in an order that leaks nothing early.

Order: size and shape → header allow-list → ``alg`` allow-list → ``kid`` lookup → ``alg`` must equal the
key's own algorithm (no algorithm confusion, RFC 8725 §3.1) → signature → ``typ`` → claims → certificate
binding → replay cache → session revocation. Nothing before the signature check trusts the token, and
``kid`` is only ever a dictionary key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature

from cyxwiz.errors import ConfigError, TokenBindingError, TokenReplayError
from cyxwiz.tokens.binding import PeerCert, thumbprints_match
from cyxwiz.tokens.claims import VerifiedToken, validate_claims
from cyxwiz.tokens.errors import (
    TokenAlgorithmError,
    TokenFormatError,
    TokenRevokedError,
    TokenSignatureError,
    TokenTypeError,
    UnknownKeyError,
)
from cyxwiz.tokens.keyring import KeyRing, utcnow
from cyxwiz.tokens.keys import Algorithm, TokenKey, b64url, b64url_decode, valid_kid
from cyxwiz.tokens.kinds import MAX_TOKEN_LIFETIME, TokenKind
from cyxwiz.tokens.replay import InMemoryReplayCache, ReplayCache

#: Headers we issue; anything else (jku, jwk, x5u, x5c, crit, b64...) is refused, never followed.
ALLOWED_HEADERS = frozenset({"alg", "typ", "kid"})
MAX_TOKEN_BYTES = 8192
_SEGMENT_RE = re.compile(rb"[A-Za-z0-9_-]+")
DEFAULT_LEEWAY = timedelta(seconds=30)


class KeySource(Protocol):
    def lookup(self, kid: str, *, now: datetime) -> TokenKey | None: ...


class SessionRevocations(Protocol):
    def is_session_revoked(self, session_id: str) -> bool: ...


class JwksKeySource:
    """Verification keys from a JWKS document (public Ed25519 keys only)."""

    def __init__(self, jwks: Mapping[str, Any], *, now: datetime | None = None) -> None:
        entries = jwks.get("keys")
        if not isinstance(entries, list):
            raise ConfigError("JWKS has no 'keys' list", field="keys", rule="B4")
        now = now or utcnow()
        self._keys = {k.kid: k for k in (TokenKey.from_public_jwk(e, now=now) for e in entries)}

    @classmethod
    def from_file(cls, path: Path) -> JwksKeySource:
        try:
            return cls(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError("cannot read JWKS", path=str(path), rule="B4") from exc

    def lookup(self, kid: str, *, now: datetime) -> TokenKey | None:
        # Publishing decides lifetime: a key absent from the current JWKS is no longer trusted.
        return self._keys.get(kid)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            # Two parsers may pick different duplicates: refuse rather than guess.
            raise TokenFormatError(f"duplicate member in {what}", field=what, rule="B1")
        return obj

    try:
        value = json.loads(raw, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise TokenFormatError(f"{what} is not JSON", field=what, rule="B1") from exc
    if not isinstance(value, dict):
        raise TokenFormatError(f"{what} is not a JSON object", field=what, rule="B1")
    return value


def _segment(raw: bytes, what: str) -> bytes:
    if not _SEGMENT_RE.fullmatch(raw) or len(raw) % 4 == 1:
        raise TokenFormatError(f"{what} is not base64url", field=what, rule="B1")
    data = b64url_decode(raw.decode("ascii"))
    # Refuse non-canonical encodings (stray low bits): one token, one byte string.
    if b64url(data).encode("ascii") != raw:
        raise TokenFormatError(f"{what} is not canonical base64url", field=what, rule="B1")
    return data


def _verify_signature(key: TokenKey, alg: Algorithm, signing_input: bytes, signature: bytes) -> bool:
    if alg == "EdDSA":
        if key.public_key is None:
            return False
        try:
            key.public_key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True
    if key.secret is None:
        return False
    expected = hmac.new(key.secret, signing_input, hashlib.sha256).digest()
    return hmac.compare_digest(expected, signature)


class TokenVerifier:
    """Verifies tokens of one issuer for one service (audience). Thread-safe."""

    def __init__(
        self,
        *,
        keys: KeySource,
        issuer: str,
        audience: str | Collection[str],
        algorithms: Collection[str] = ("EdDSA",),
        clock: Callable[[], datetime] = utcnow,
        leeway: timedelta = DEFAULT_LEEWAY,
        replay_cache: ReplayCache | None = None,
        revocations: SessionRevocations | None = None,
        max_lifetime: timedelta | None = None,
    ) -> None:
        allowed = frozenset(algorithms)
        if not allowed or not allowed <= {"EdDSA", "HS256"}:
            raise ConfigError(
                "algorithms must be a non-empty subset of EdDSA, HS256", field="algorithms", rule="B3"
            )
        if "HS256" in allowed and not (isinstance(keys, KeyRing) and keys.issuer_is_sole_verifier):
            # A shared secret lets every verifier mint tokens: only the issuer's own ring may verify HS256.
            raise ConfigError(
                "HS256 verification needs the issuer's own key ring marked issuer_is_sole_verifier",
                field="algorithms",
                rule="B3",
            )
        self.keys = keys
        self.issuer = issuer
        self.audiences = frozenset([audience] if isinstance(audience, str) else audience)
        self.algorithms = allowed
        self.clock = clock
        self.leeway = leeway
        self.replay_cache = replay_cache if replay_cache is not None else InMemoryReplayCache()
        self.revocations = revocations
        if max_lifetime is None:
            max_lifetime = keys.max_token_lifetime if isinstance(keys, KeyRing) else MAX_TOKEN_LIFETIME
        self.max_lifetime = max_lifetime

    @classmethod
    def from_keyring(
        cls, ring: KeyRing, *, issuer: str, audience: str | Collection[str], **options: Any
    ) -> TokenVerifier:
        algorithms = options.pop(
            "algorithms", ("EdDSA", "HS256") if ring.issuer_is_sole_verifier else ("EdDSA",)
        )
        return cls(keys=ring, issuer=issuer, audience=audience, algorithms=algorithms, **options)

    @classmethod
    def from_jwks_file(
        cls, path: Path, *, issuer: str, audience: str | Collection[str], **options: Any
    ) -> TokenVerifier:
        return cls(keys=JwksKeySource.from_file(path), issuer=issuer, audience=audience, **options)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> TokenVerifier:
        """``CYXWIZ_TOKEN_ISSUER``, ``CYXWIZ_TOKEN_AUDIENCE`` (comma-separated), and the keys from
        ``CYXWIZ_TOKEN_JWKS_FILE`` (a verifier-only service) or else the key ring variables of
        :meth:`KeyRing.from_env` (the issuer verifying its own tokens)."""
        env = os.environ if env is None else env
        issuer = env.get("CYXWIZ_TOKEN_ISSUER", "cyxwiz-coordinator")
        audience = [a.strip() for a in env.get("CYXWIZ_TOKEN_AUDIENCE", "cyxwiz-api").split(",") if a.strip()]
        if env.get("CYXWIZ_TOKEN_JWKS_FILE"):
            return cls.from_jwks_file(
                Path(env["CYXWIZ_TOKEN_JWKS_FILE"]), issuer=issuer, audience=audience, **options
            )
        return cls.from_keyring(KeyRing.from_env(env), issuer=issuer, audience=audience, **options)

    def verify(
        self,
        token: str | bytes,
        *,
        kind: TokenKind,
        peer_cert: PeerCert | None = None,
        audience: str | None = None,
        one_shot: bool | None = None,
    ) -> VerifiedToken:
        """Verify ``token`` as a ``kind`` token, or raise a :class:`cyxwiz.errors.TokenError` subclass.

        ``peer_cert``: the client certificate of the TLS session (``x509.Certificate`` or DER); required
        for certificate-bound tokens. ``audience``: override the verifier's audiences for this call.
        ``one_shot``: consume the jti (default: the kind's rule, True for p2p).
        """
        now = self.clock()
        payload_seg, kid = self._check_signature(token, kind=kind, now=now)
        claims = _json_object(_segment(payload_seg, "payload"), "payload")
        verified = validate_claims(
            claims,
            kind=kind,
            kid=kid,
            issuer=self.issuer,
            audiences=frozenset([audience]) if audience is not None else self.audiences,
            now=now,
            leeway=self.leeway,
            max_lifetime=self.max_lifetime,
        )
        self._check_binding(verified, peer_cert)
        consume = kind.spec.one_shot if one_shot is None else one_shot
        if consume and not self.replay_cache.remember(verified.jti, expires_at=verified.expires_at, now=now):
            raise TokenReplayError("one-shot token already used", field="jti", rule="B5")
        if (
            self.revocations is not None
            and verified.session_id is not None
            and self.revocations.is_session_revoked(verified.session_id)
        ):
            raise TokenRevokedError("the session was revoked", field="session_id", rule="B5")
        return verified

    def _check_signature(self, token: str | bytes, *, kind: TokenKind, now: datetime) -> tuple[bytes, str]:
        raw = token.encode("ascii", "replace") if isinstance(token, str) else token
        if len(raw) > MAX_TOKEN_BYTES:
            raise TokenFormatError("token is too large", field="token", rule="B1")
        parts = raw.split(b".")
        if len(parts) != 3:
            raise TokenFormatError("not a compact JWS (three segments)", field="token", rule="B1")
        header = _json_object(_segment(parts[0], "header"), "header")
        if not header.keys() <= ALLOWED_HEADERS:
            raise TokenFormatError("unsupported header member", field="header", rule="B1")
        alg = header.get("alg")
        if alg not in self.algorithms:
            # Exact, case-sensitive match: 'none', 'None', 'noNE' and anything unlisted end here.
            raise TokenAlgorithmError("algorithm not allowed", field="alg", rule="B3")
        kid = header.get("kid")
        if not isinstance(kid, str) or not valid_kid(kid):
            raise UnknownKeyError("missing or malformed kid", field="kid", rule="B4")
        key = self.keys.lookup(kid, now=now)
        if key is None:
            raise UnknownKeyError("unknown or retired signing key", field="kid", rule="B4")
        if key.alg != alg:
            raise TokenAlgorithmError("alg does not match the key's algorithm", field="alg", rule="B3")
        if not _verify_signature(key, key.alg, parts[0] + b"." + parts[1], _segment(parts[2], "signature")):
            raise TokenSignatureError("signature does not verify", field="signature", rule="B1")
        # typ is checked after the signature: an attacker learns nothing about kinds from forged tokens.
        if header.get("typ") != kind.typ:
            raise TokenTypeError(f"not a {kind.value} token", field="typ", rule="B1")
        return parts[1], kid

    @staticmethod
    def _check_binding(verified: VerifiedToken, peer_cert: PeerCert | None) -> None:
        if verified.cert_thumbprint is None:
            return
        if peer_cert is None:
            raise TokenBindingError(
                "certificate-bound token without a client certificate", field="cnf", rule="B5"
            )
        if not thumbprints_match(verified.cert_thumbprint, peer_cert):
            raise TokenBindingError("token is bound to another certificate", field="cnf", rule="B5")
