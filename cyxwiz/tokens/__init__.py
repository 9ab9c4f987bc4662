"""cyxwiz.tokens — JWT kinds, key ring (kid/JWKS/rotation), certificate binding, replay defences (SPEC B).

Typical use from an HTTP handler::

    issuer = TokenIssuer.from_env()                 # signing side (coordinator)
    verifier = TokenVerifier.from_env(replay_cache=store, revocations=store)
    claims = verifier.verify(bearer, kind=TokenKind.SESSION, peer_cert=der_from_tls)

The SQL store lives in :mod:`cyxwiz.tokens.sql` (imported on demand: it pulls in SQLAlchemy).
"""

from cyxwiz.tokens.binding import cert_thumbprint
from cyxwiz.tokens.claims import VerifiedToken
from cyxwiz.tokens.issuer import IssuedToken, TokenIssuer
from cyxwiz.tokens.keyring import (
    DirKeyRingStore,
    KeyRing,
    MemorySecretStore,
    SecretKeyRingStore,
    SecretStore,
    rotate_if_due,
)
from cyxwiz.tokens.keys import TokenKey
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.refresh import InMemoryRefreshStore, RefreshStore, SessionManager, TokenPair
from cyxwiz.tokens.replay import InMemoryReplayCache, ReplayCache
from cyxwiz.tokens.verifier import JwksKeySource, TokenVerifier

__all__ = [
    "DirKeyRingStore",
    "InMemoryRefreshStore",
    "InMemoryReplayCache",
    "IssuedToken",
    "JwksKeySource",
    "KeyRing",
    "MemorySecretStore",
    "RefreshStore",
    "ReplayCache",
    "SecretKeyRingStore",
    "SecretStore",
    "SessionManager",
    "TokenIssuer",
    "TokenKey",
    "TokenKind",
    "TokenPair",
    "TokenVerifier",
    "VerifiedToken",
    "cert_thumbprint",
    "rotate_if_due",
]
