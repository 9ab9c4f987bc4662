"""Who is calling, as authorization sees it (SPEC C1, C2).

Built only from a :class:`~cyxwiz.tokens.VerifiedToken` plus, for nodes, the verified TLS client
certificate: a node's identity is derived from its certificate (its PeerID by default), never from a
request body, and a node token whose ``node_id`` disagrees with the certificate is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from cyxwiz.authz.roles import Permission, Role, permissions_for
from cyxwiz.errors import AuthenticationError
from cyxwiz.tokens.binding import PeerCert, thumbprints_match
from cyxwiz.tokens.claims import VerifiedToken
from cyxwiz.tokens.kinds import TokenKind

NodeIdentity = Callable[[x509.Certificate], str]


def default_node_identity(cert: x509.Certificate) -> str:
    """A node is named by the PeerID of its certificate key (A5)."""
    from cyxwiz.pki.peerid import peer_id

    return peer_id(cert)


@dataclass(frozen=True, kw_only=True)
class Principal:
    role: Role
    subject: str
    scopes: frozenset[str]
    user_id: str | None = None
    node_id: str | None = None
    session_id: str | None = None
    #: Set for job tokens: the one job this principal may touch (C3).
    job_id: str | None = None
    token_kind: TokenKind | None = None

    @property
    def permissions(self) -> frozenset[str]:
        """What this call may do: the role's permissions narrowed by the token's scopes."""
        return frozenset(p.value for p in permissions_for(self.role)) & self.scopes

    def can(self, permission: Permission | str) -> bool:
        return str(permission) in self.permissions

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @classmethod
    def from_token(
        cls,
        token: VerifiedToken,
        *,
        peer_cert: PeerCert | None = None,
        node_identity: NodeIdentity = default_node_identity,
    ) -> Principal:
        """The principal of a verified token. Node tokens need the TLS peer certificate (C2)."""
        role = Role(token.role)
        node_id = token.node_id if role is Role.NODE else None
        if role is Role.NODE:
            node_id = _node_from_certificate(token, peer_cert, node_identity)
        return cls(
            role=role,
            subject=token.subject,
            scopes=token.scopes,
            user_id=token.user_id,
            node_id=node_id,
            session_id=token.session_id,
            job_id=token.job_id if token.kind is TokenKind.JOB else None,
            token_kind=token.kind,
        )


def _node_from_certificate(
    token: VerifiedToken, peer_cert: PeerCert | None, node_identity: NodeIdentity
) -> str:
    if peer_cert is None:
        raise AuthenticationError("a node must present its client certificate", field="peer_cert", rule="C2")
    if token.cert_thumbprint is None or not thumbprints_match(token.cert_thumbprint, peer_cert):
        raise AuthenticationError("node token is not bound to this certificate", field="cnf", rule="B5")
    cert = x509.load_der_x509_certificate(peer_cert) if isinstance(peer_cert, bytes) else peer_cert
    identity = node_identity(cert)
    if token.node_id != identity:
        raise AuthenticationError(
            "token node_id does not match the certificate's identity", field="node_id", rule="C2"
        )
    return identity
