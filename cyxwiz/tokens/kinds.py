"""The four token kinds (SPEC B1, B2): explicit ``typ`` values, lifetimes and required claims.

Each kind has its own media type in the JOSE header ``typ`` (RFC 8725 §3.11): the header is signed, so a
token minted as one kind can never be presented as another, even though the claim sets look alike.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta


class TokenKind(enum.StrEnum):
    SESSION = "session"
    JOB = "job"
    P2P = "p2p"
    REFRESH = "refresh"

    @property
    def typ(self) -> str:
        """The JOSE ``typ`` header value of this kind (``application/`` prefix omitted, RFC 7515 §4.1.9)."""
        return f"cyxwiz-{self.value}+jwt"

    @property
    def spec(self) -> KindSpec:
        return KIND_SPECS[self]

    @classmethod
    def from_typ(cls, typ: str) -> TokenKind | None:
        for kind in cls:
            if kind.typ == typ:
                return kind
        return None


@dataclass(frozen=True, kw_only=True)
class KindSpec:
    """What a kind requires.

    ``principal`` lists which identity claims are allowed: exactly one of them must be present
    (a session belongs to a user *or* a node, never both).
    """

    default_lifetime: timedelta
    required: frozenset[str]
    principal: frozenset[str]
    #: True: exactly one of ``principal`` is present. False: the listed ones are required, others allowed.
    exclusive_principal: bool
    #: A node holding this token must prove possession of its certificate (RFC 8705 ``cnf``).
    bound_when_node: bool
    #: Verified at most once (jti replay cache) unless the caller says otherwise.
    one_shot: bool


COMMON_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "role"})

#: Job tokens live for the job's wall-time limit plus this margin (B2) unless the caller says otherwise.
DEFAULT_JOB_MARGIN = timedelta(minutes=15)

KIND_SPECS: dict[TokenKind, KindSpec] = {
    TokenKind.SESSION: KindSpec(
        default_lifetime=timedelta(hours=24),
        required=COMMON_CLAIMS | {"session_id"},
        principal=frozenset({"user_id", "node_id"}),
        exclusive_principal=True,
        bound_when_node=True,
        one_shot=False,
    ),
    TokenKind.JOB: KindSpec(
        # Placeholder: the issuer always derives a job token's lifetime from the job's duration.
        default_lifetime=timedelta(hours=1) + DEFAULT_JOB_MARGIN,
        required=COMMON_CLAIMS | {"job_id", "node_id", "cnf"},
        principal=frozenset({"node_id"}),
        exclusive_principal=False,
        bound_when_node=True,
        one_shot=False,
    ),
    TokenKind.P2P: KindSpec(
        default_lifetime=timedelta(hours=1),
        # node_id names the node the holder may talk to; the holder itself is sub (+ user_id when a user).
        required=COMMON_CLAIMS | {"node_id"},
        principal=frozenset({"node_id"}),
        exclusive_principal=False,
        bound_when_node=False,
        one_shot=True,
    ),
    TokenKind.REFRESH: KindSpec(
        default_lifetime=timedelta(days=7),
        required=COMMON_CLAIMS | {"session_id"},
        principal=frozenset({"user_id", "node_id"}),
        exclusive_principal=True,
        bound_when_node=True,
        # Refresh tokens are one-shot through their family store (rotation), not the jti cache.
        one_shot=False,
    ),
}

#: No token of any kind may outlive this; the key ring keeps a retired public key exactly this long.
MAX_TOKEN_LIFETIME = timedelta(days=7)
