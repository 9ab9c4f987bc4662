"""Fixtures for the token tests: a controllable clock, a key ring, issuer/verifier, two node certificates."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from cyxwiz.tokens import KeyRing, TokenIssuer, TokenKind, TokenVerifier
from cyxwiz.tokens.keys import b64url

ISSUER = "cyxwiz-coordinator"
AUDIENCE = "cyxwiz-api"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring(clock: Clock) -> KeyRing:
    return KeyRing.generate(now=clock())


@pytest.fixture
def issuer(ring: KeyRing, clock: Clock) -> TokenIssuer:
    return TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)


@pytest.fixture
def verifier(ring: KeyRing, clock: Clock) -> TokenVerifier:
    return TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)


def _cert(name: str, ca_key: Ed25519PrivateKey) -> x509.Certificate:
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - timedelta(days=1))
        .not_valid_after(T0 + timedelta(days=90))
        .sign(ca_key, None)
    )


@pytest.fixture(scope="session")
def certs() -> tuple[x509.Certificate, x509.Certificate]:
    """Two node certificates (A, B) from one CA: only their thumbprints matter to binding."""
    ca_key = Ed25519PrivateKey.generate()
    return _cert("node-a", ca_key), _cert("node-b", ca_key)


Forge = Callable[..., str]


@pytest.fixture
def forge(ring: KeyRing) -> Forge:
    """Build a token by hand, signed with the ring's *real* key unless told otherwise: an attacker who
    could sign would need none of the claim checks, so these tests isolate one rule at a time."""

    def make(
        claims: dict[str, Any],
        *,
        header: dict[str, Any] | None = None,
        key: Ed25519PrivateKey | None = None,
        raw_payload: bytes | None = None,
    ) -> str:
        signing = ring.signing_key
        hdr = {"alg": "EdDSA", "typ": TokenKind.SESSION.typ, "kid": signing.kid}
        hdr.update(header or {})
        hdr = {k: v for k, v in hdr.items() if v is not None}
        h = b64url(json.dumps(hdr, separators=(",", ":")).encode())
        p = b64url(raw_payload if raw_payload is not None else json.dumps(claims).encode())
        private = key or signing.private_key
        assert private is not None
        sig = private.sign(f"{h}.{p}".encode())
        return f"{h}.{p}.{b64url(sig)}"

    return make


def session_claims(clock: Clock, **over: Any) -> dict[str, Any]:
    now = int(clock().timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": "j" * 22,
        "scope": ["job:read"],
        "role": "user",
        "user_id": "alice",
        "session_id": "s" * 22,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def token_store(store_kind: str, tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A replay cache + refresh store: in-memory, SQLite file, or the real PostgreSQL server."""
    if store_kind == "memory":
        from cyxwiz.tokens import InMemoryRefreshStore, InMemoryReplayCache

        class Both(InMemoryReplayCache, InMemoryRefreshStore):
            def __init__(self) -> None:
                InMemoryReplayCache.__init__(self)
                InMemoryRefreshStore.__init__(self)

            def purge(self, *, now: datetime) -> int:
                return InMemoryReplayCache.purge(self, now=now) + InMemoryRefreshStore.purge(self, now=now)

        yield Both()
        return
    from cyxwiz.tokens.sql import SqlTokenStore

    url = (
        f"sqlite:///{tmp_path}/tokens.db"
        if store_kind == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = SqlTokenStore.from_url(url)
    yield store
    store.engine.dispose()
