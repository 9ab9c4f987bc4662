"""One token key: an Ed25519 key pair (EdDSA, the default) or an HS256 secret (issuer-only, B3).

``kid`` values are RFC 7638 JWK thumbprints for Ed25519 (so anyone holding the JWKS can recompute them)
and random for HS256. A ``kid`` arriving in a token is untrusted: :func:`valid_kid` restricts it to a short
base64url string before it is used as a dictionary key, and it is never used as a path or URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cyxwiz.errors import ConfigError, KeyFormatError, KeyTypeError
from cyxwiz.pki.keys import parse_private_key

Algorithm = Literal["EdDSA", "HS256"]
ALGORITHMS: tuple[Algorithm, ...] = ("EdDSA", "HS256")

_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: 256-bit HMAC secrets: RFC 7518 §3.2 asks for a key at least as long as the hash output.
HS256_SECRET_BYTES = 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def valid_kid(kid: object) -> bool:
    return isinstance(kid, str) and _KID_RE.fullmatch(kid) is not None


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def jwk_thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, no whitespace."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64url(_raw_public(public_key))},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def load_ed25519_pem(pem: bytes, *, source: str = "key") -> Ed25519PrivateKey:
    """Parse a PKCS#8 PEM Ed25519 private key (A2) with the PKI's rules and typed errors."""
    return parse_private_key(pem, path=source)


@dataclass(frozen=True, kw_only=True)
class TokenKey:
    """A key of the ring. ``retired_at`` is when it stopped signing (None: still the signing key)."""

    kid: str
    alg: Algorithm
    created_at: datetime
    retired_at: datetime | None = None
    private_key: Ed25519PrivateKey | None = None
    public_key: Ed25519PublicKey | None = None
    secret: bytes | None = None

    def __post_init__(self) -> None:
        if not valid_kid(self.kid):
            raise ConfigError("kid must be 1-64 base64url characters", field="kid", rule="B4")
        if self.alg == "EdDSA" and self.public_key is None:
            raise ConfigError("an EdDSA key needs a public key", field="public_key", rule="B3")
        if self.alg == "HS256" and (self.secret is None or len(self.secret) < HS256_SECRET_BYTES):
            raise ConfigError(
                f"an HS256 secret must be at least {HS256_SECRET_BYTES} bytes", field="secret", rule="B3"
            )

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def generate(cls, *, alg: Algorithm = "EdDSA", now: datetime) -> TokenKey:
        if alg == "HS256":
            return cls.from_secret(secrets.token_bytes(HS256_SECRET_BYTES), now=now)
        return cls.from_private_key(Ed25519PrivateKey.generate(), now=now)

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey, *, now: datetime) -> TokenKey:
        public = key.public_key()
        return cls(
            kid=jwk_thumbprint(public), alg="EdDSA", created_at=now, private_key=key, public_key=public
        )

    @classmethod
    def from_secret(cls, secret: bytes, *, now: datetime, kid: str | None = None) -> TokenKey:
        kid = kid or "hs-" + b64url(hashlib.sha256(b"cyxwiz-kid" + secret).digest()[:12])
        return cls(kid=kid, alg="HS256", created_at=now, secret=secret)

    @classmethod
    def from_public_jwk(cls, jwk: dict[str, Any], *, now: datetime) -> TokenKey:
        """A verification-only key from a JWKS entry. Only Ed25519 OKP keys are accepted (B3)."""
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise KeyTypeError("JWKS entries must be OKP/Ed25519", field="kty", rule="B3")
        if jwk.get("alg", "EdDSA") != "EdDSA" or "d" in jwk:
            raise ConfigError("JWKS entry must be a public EdDSA key", field="alg", rule="B3")
        try:
            public = Ed25519PublicKey.from_public_bytes(b64url_decode(str(jwk["x"])))
        except (KeyError, ValueError) as exc:
            raise KeyFormatError("JWKS entry has no valid 'x'", field="x", rule="B4") from exc
        kid = jwk.get("kid")
        if kid != jwk_thumbprint(public):
            # The kid is what tokens name: it must be the key's own thumbprint, not a free label.
            raise ConfigError("JWKS kid is not the key's RFC 7638 thumbprint", field="kid", rule="B4")
        return cls(kid=kid, alg="EdDSA", created_at=now, public_key=public)

    def retire(self, at: datetime) -> TokenKey:
        return self if self.retired_at is not None else replace(self, retired_at=at)

    # -- use -------------------------------------------------------------------------------------

    @property
    def can_sign(self) -> bool:
        return self.private_key is not None or self.secret is not None

    def signing_material(self) -> Ed25519PrivateKey | bytes:
        material = self.private_key if self.alg == "EdDSA" else self.secret
        if material is None:
            raise ConfigError("this key has no private part", field="kid", rule="B4")
        return material

    def public_jwk(self) -> dict[str, str]:
        """The JWKS entry (public keys only: an HS256 secret is never published)."""
        if self.public_key is None:
            raise ConfigError("HS256 keys have no public form", field="alg", rule="B3")
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(_raw_public(self.public_key)),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }

    def private_pem(self) -> bytes:
        if self.private_key is None:
            raise ConfigError("no private key", field="kid", rule="B4")
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
