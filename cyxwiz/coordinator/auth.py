"""Who is calling, and may they (SPEC B, C1, C2, C3, H2).

A node is its mTLS certificate: the PeerID selects the node row, and every node token must be bound to
that same certificate (``cnf.x5t#S256``) and name that same node. A user or admin is their session token.
Each decision is audited; refusals are raised as the typed errors the problem handler renders.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.coordinator.limits import RateLimiter
from cyxwiz.coordinator.store import CoordinatorStore, NodeRecord
from cyxwiz.errors import AuthenticationError, AuthorizationError, CyxwizError, TokenBindingError
from cyxwiz.tokens.claims import VerifiedToken
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.identity import PeerIdentity, peer_from_scope

#: Certificate roles allowed to act as a node (A1: workers run jobs).
NODE_CERT_ROLES = frozenset({"worker"})


@dataclass(frozen=True)
class Caller:
    role: str  # node | user | admin
    principal_id: str  # node_id or user_id
    token: VerifiedToken | None
    peer: PeerIdentity | None
    ip: str | None
    node: NodeRecord | None = None

    @property
    def actor_type(self) -> str:
        return {"node": "node", "user": "user", "admin": "admin"}.get(self.role, "anonymous")


def client_ip(conn: HTTPConnection) -> str | None:
    host = conn.client.host if conn.client else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def bearer(conn: HTTPConnection, header: str = "authorization") -> str:
    value = conn.headers.get(header, "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("a Bearer token is required", field=header, rule="B1")
    return token.strip()


class Authenticator:
    """Turns a request into a :class:`Caller` or a typed refusal, auditing both."""

    def __init__(
        self,
        *,
        store: CoordinatorStore,
        verifier: TokenVerifier,
        limiter: RateLimiter,
        audit: AuditSink | None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.limiter = limiter
        self.audit = audit

    def _record(self, event: ev.SecurityEvent) -> None:
        if self.audit is not None:
            self.audit.record(event)

    def require_peer(self, conn: HTTPConnection) -> PeerIdentity:
        peer = peer_from_scope(conn.scope)
        if peer is None:
            raise AuthenticationError("a client certificate is required", field="certificate", rule="D1")
        return peer

    def node_peer(self, conn: HTTPConnection) -> PeerIdentity:
        """A verified worker certificate (register: no token exists yet)."""
        peer = self.require_peer(conn)
        if peer.role not in NODE_CERT_ROLES:
            raise AuthorizationError(
                f"certificate role {peer.role!r} may not act as a node", field="certificate", rule="C1"
            )
        return peer

    def authenticate(
        self,
        conn: HTTPConnection,
        *,
        kind: TokenKind,
        roles: Collection[str],
        header: str = "authorization",
    ) -> Caller:
        ip = client_ip(conn)
        peer = peer_from_scope(conn.scope)
        token = self.verifier.verify(
            bearer(conn, header), kind=kind, peer_cert=peer.certificate if peer is not None else None
        )
        caller = self._caller(token, peer, ip)
        if caller.role not in roles:
            raise AuthorizationError(
                f"role {caller.role!r} may not call this endpoint", field="role", rule="C1"
            )
        self.limiter.check(f"{caller.role}:{caller.principal_id}")
        conn.scope.setdefault("state", {})["caller"] = caller
        self._record(
            ev.auth_attempt(
                actor_id=caller.principal_id,
                actor_type=caller.actor_type,
                success=True,
                method=f"jwt:{kind.value}" + ("+mtls" if peer is not None else ""),
                ip_address=ip,
                peer_id=peer.peer_id if peer is not None else None,
                cert_subject=peer.subject if peer is not None else None,
                resource=conn.url.path,
            )
        )
        return caller

    def _caller(self, token: VerifiedToken, peer: PeerIdentity | None, ip: str | None) -> Caller:
        if token.role == "node":
            if peer is None:
                raise AuthenticationError("node tokens need the node's client certificate", rule="B5")
            node = self.store.node_by_peer(peer.peer_id)
            if node is None or token.node_id != node.node_id:
                # The cnf binding already ties the token to this cert; this catches a token minted for
                # another node id while bound to this key (a confused or compromised issuer).
                raise TokenBindingError("token was issued to another node", field="node_id", rule="C2")
            if node.status in ("banned", "revoked"):
                raise AuthorizationError(f"node is {node.status}", field="node_id", rule="C1")
            return Caller("node", node.node_id, token, peer, ip, node)
        principal = token.user_id or token.subject
        return Caller(token.role, principal, token, peer, ip)

    def allow(self, caller: Caller, *, resource: str, action: str, allowed: bool, reason: str) -> None:
        """Record an authorization decision; raise AuthorizationError (403) when not allowed."""
        self._record(
            ev.access_decision(
                actor_id=caller.principal_id,
                actor_type=caller.actor_type,
                resource=resource,
                action=action,
                allowed=allowed,
                reason=reason,
                ip_address=caller.ip,
            )
        )
        if not allowed:
            err = AuthorizationError(
                reason, field="job_id" if resource.startswith("job:") else None, rule="C2"
            )
            err.audited = True  # type: ignore[attr-defined]  # recorded above; the handler skips it
            raise err

    def require_scope(self, caller: Caller, scope: str) -> None:
        if caller.token is None or not caller.token.has_scope(scope):
            raise AuthorizationError(f"token lacks scope {scope!r}", field="scope", rule="C1")


def credential_admission(verifier: TokenVerifier) -> Callable[[dict[str, Any]], None]:
    """The check before a request body is read (SPEC I): a verified client certificate, or a Bearer token
    of ours (session or job) that verifies. Who may do what is decided later, by the route's rule; this
    only keeps an unauthenticated client from making the coordinator buffer a body."""

    def admit(scope: dict[str, Any]) -> None:
        if peer_from_scope(scope) is not None:
            return
        raw = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = raw.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "a client certificate is required (or a Bearer token) before a request body is read",
                field="certificate",
                rule="D1",
            )
        first: CyxwizError | None = None
        for kind in (TokenKind.SESSION, TokenKind.JOB):
            try:
                verifier.verify(token.strip(), kind=kind)
            except CyxwizError as exc:
                first = first or exc
                continue
            return
        assert first is not None
        raise first

    return admit


def node_payload(node: NodeRecord) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "peer_id": node.peer_id,
        "subject": node.subject,
        "status": node.status,
        "hardware": node.hardware,
        "registered_at": node.registered_at.isoformat(),
        "last_heartbeat": node.last_heartbeat.isoformat() if node.last_heartbeat else None,
        "wallet": node.wallet,
    }
