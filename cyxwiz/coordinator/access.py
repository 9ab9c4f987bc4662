"""The authorization table applied to coordinator routes, as one FastAPI dependency (SPEC C1–C3, H2).

Every route declares ``access: Annotated[Access, Depends(Allow("<rule>"))]``; :class:`Allow` looks the
rule up in :data:`cyxwiz.authz.RULES`, authenticates the caller with the rule's credential, checks role and
scope, then the resource rule over the job the path names, auditing each decision. A route cannot be
reached without its rule having allowed it (tests check that every route declares one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.authz import Credential, Resource, Rule, job_assigned, job_token_for, job_visible
from cyxwiz.authz.policies import OPEN_JOB_STATES, RESENDABLE_AFTER_PROOF, RULES, RUN_LIVE_STATES
from cyxwiz.coordinator.auth import Authenticator, Caller
from cyxwiz.coordinator.hooks import CoordinatorHooks
from cyxwiz.coordinator.renewal import CertificateIssuer
from cyxwiz.coordinator.schemas import TokenPair
from cyxwiz.coordinator.store import CoordinatorStore, JobRecord, NodeRecord
from cyxwiz.errors import AuthorizationError, ValidationError
from cyxwiz.ids import JOB_ID, NODE_ID
from cyxwiz.tokens.claims import VerifiedToken
from cyxwiz.tokens.issuer import TokenIssuer, new_id
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.identity import PeerIdentity, peer_from_scope

NodeRevoker = Callable[[NodeRecord, str], None]

_TOKEN_KIND = {Credential.SESSION: TokenKind.SESSION, Credential.JOB: TokenKind.JOB}


@dataclass(frozen=True, kw_only=True)
class Coordinator:
    """What every route needs: the store, token issuer/verifier, hooks, audit and the authenticator."""

    store: CoordinatorStore
    issuer: TokenIssuer
    verifier: TokenVerifier
    hooks: CoordinatorHooks
    auth: Authenticator
    audit: AuditSink | None = None
    revoker: NodeRevoker | None = None
    #: Where node renewals go: the issuer service, which holds the CA key (None: renewal refused).
    renewer: CertificateIssuer | None = None
    #: Closes the live connections of a peer (its PeerID): a ban reaches open connections at once.
    close_peer: Callable[[str], None] | None = None

    def record(self, event: ev.SecurityEvent) -> None:
        if self.audit is not None:
            self.audit.record(event)

    def open_session(
        self,
        *,
        node: NodeRecord | None,
        user_id: str | None,
        role: str,
        peer: PeerIdentity | None,
        scopes: Sequence[str] | None = None,
    ) -> TokenPair:
        session_id = new_id()
        principal = node.node_id if node is not None else str(user_id)
        self.store.create_session(
            session_id=session_id, principal_kind="node" if node else "user", principal_id=principal
        )
        if peer is not None:
            self.store.bind_session_cert(
                session_id=session_id, issuer=peer.certificate.issuer.rfc4514_string(), serial=peer.serial
            )
        cert = peer.certificate if node is not None and peer is not None else None
        node_id = node.node_id if node is not None else None
        user = None if node else user_id
        session = self.issuer.session(
            node_id=node_id, user_id=user, role=role, session_id=session_id, cert=cert, scopes=scopes
        )
        # The refresh token carries the session's scopes: a refreshed session never widens (C1).
        refresh = self.issuer.refresh(
            session_id=session_id,
            node_id=node_id,
            user_id=user,
            role=role,
            cert=cert,
            scopes=sorted(session.claims["scope"]) if scopes is None else scopes,
        )
        self.store.add_refresh(jti=refresh.jti, session_id=session_id, expires_at=refresh.expires_at)
        return TokenPair(
            session_token=session.token,
            refresh_token=refresh.token,
            session_id=session_id,
            expires_at=session.expires_at.isoformat(),
        )

    def check_claimed_node(
        self, caller_node: NodeRecord | None, claimed: str | None, peer: PeerIdentity, ip: str | None
    ) -> None:
        """A body may name the calling node (old clients do); naming another one is impersonation (C2)."""
        if claimed is None or (caller_node is not None and claimed == caller_node.node_id):
            return
        self.record(
            ev.access_decision(
                actor_id=peer.peer_id,
                actor_type=ev.ActorType.NODE,
                resource=f"node:{claimed}",
                action="impersonate",
                allowed=False,
                reason="body names another node than the certificate",
                ip_address=ip,
            )
        )
        err = AuthorizationError("node_id does not match the client certificate", field="node_id", rule="C2")
        err.audited = True  # type: ignore[attr-defined]
        raise err


@dataclass(frozen=True)
class Access:
    """What the rule established: the rule, the caller (token credentials), the peer, the job."""

    rule: Rule
    caller: Caller | None = None
    peer: PeerIdentity | None = None
    job: JobRecord | None = None
    #: The job token's job is past its proof: the route may only take the proof it already holds again
    #: (:meth:`decide_resend`), anything else is refused as the dead token it is (issue 21, F2).
    resend_only: bool = False

    @property
    def who(self) -> Caller:
        assert self.caller is not None, f"rule {self.rule.name} authenticates no token"
        return self.caller

    def decide_resend(self, ctx: Coordinator, *, same: bool) -> None:
        """Record the decision the rule deferred: a re-send of the very proof the job holds is allowed
        (its first answer was lost); anything else is refused exactly as a dead job token is (C3)."""
        assert self.job is not None and self.resend_only
        reason = (
            "the proof already in, sent again" if same else f"job token is dead: job is {self.job.status}"
        )
        ctx.auth.allow(
            self.who,
            resource=f"job:{self.job.job_id}",
            action=str(self.rule.scope),
            allowed=same,
            reason=reason,
        )


def coordinator(request: Request) -> Coordinator:
    ctx: Coordinator = request.app.state.coordinator
    return ctx


class Allow:
    """FastAPI dependency applying one rule of the table; ``Depends(Allow("jobs.read"))``."""

    def __init__(self, name: str) -> None:
        self.rule = RULES[name]

    def __call__(self, request: Request) -> Access:
        ctx = coordinator(request)
        rule = self.rule
        _check_ids(request.path_params)
        if rule.credential is Credential.NONE:
            return Access(rule)
        if rule.credential is Credential.CERTIFICATE:
            return Access(rule, peer=_certificate(ctx.auth, rule, request))
        if rule.credential is Credential.REFRESH:
            return Access(rule, peer=peer_from_scope(request.scope))
        caller = ctx.auth.authenticate(
            request, kind=_TOKEN_KIND[rule.credential], roles={r.value for r in rule.roles}
        )
        assert caller.token is not None
        rule.check_role_scope(caller.role, caller.token.scopes)
        job = _resource(ctx, rule, caller, request.path_params)
        resend = job is not None and rule.name in RESENDABLE_AFTER_PROOF and job.status not in OPEN_JOB_STATES
        return Access(rule, caller=caller, peer=caller.peer, job=job, resend_only=resend)


#: The canonical form of the ids the coordinator mints: anything else names nothing and is refused before
#: any lookup or decision (an id is never matched loosely, issue 18).
_ID_FORMS = {"job_id": JOB_ID, "node_id": NODE_ID}


def _check_ids(params: dict[str, Any]) -> None:
    for name, form in _ID_FORMS.items():
        value = params.get(name)
        if value is not None and not form.fullmatch(str(value)):
            raise ValidationError(
                f"not a {name.removesuffix('_id')} id in canonical form", field=name, rule="C3"
            )


def _certificate(auth: Authenticator, rule: Rule, request: Request) -> PeerIdentity:
    if "node" in rule.roles:
        return auth.node_peer(request)
    peer = auth.require_peer(request)
    if peer.role not in {r.value for r in rule.roles}:
        raise AuthorizationError(f"certificate role {peer.role!r} cannot log in as a user", rule="C1")
    return peer


def _resource(ctx: Coordinator, rule: Rule, caller: Caller, params: dict[str, Any]) -> JobRecord | None:
    """The resource rule over the job the path names (C2, C3); listings are narrowed by their route."""
    token = caller.token
    assert token is not None
    if rule.resource is Resource.OWN_JOBS and caller.role == "admin":
        # An admin's listing is every job: that needs what admin.jobs needs (C1).
        RULES["admin.jobs"].check_role_scope(caller.role, token.scopes)
    if rule.resource not in (Resource.JOB_VISIBLE, Resource.JOB_ASSIGNED, Resource.JOB_TOKEN):
        return None
    job_id = str(params["job_id"])
    job = ctx.store.job(job_id)
    if rule.resource is Resource.JOB_VISIBLE:
        why = job_visible(
            role=caller.role,
            principal_id=caller.principal_id,
            scopes=token.scopes,
            owner=job.user_id,
            node=job.node_id,
        )
        ctx.auth.allow(
            caller,
            resource=f"job:{job_id}",
            action="job.read",
            allowed=why is not None,
            reason=why or "job belongs to someone else",
        )
    elif rule.resource is Resource.JOB_ASSIGNED:
        ok = job_assigned(principal_id=caller.principal_id, node=job.node_id, status=job.status)
        ctx.auth.allow(
            caller,
            resource=f"job:{job_id}",
            action="job-token.fetch",
            allowed=ok,
            reason="assigned node" if ok else "job is not assigned to this node",
        )
    else:
        why = job_token_for(
            token_job=token.job_id,
            token_node=caller.principal_id,
            job_id=job_id,
            node=job.node_id,
            status=job.status,
        )
        dead = ctx.store.grant_refusal(token.jti, job=job)
        if why is None and dead is None and rule.name in RESENDABLE_AFTER_PROOF:
            resend = job_token_for(
                token_job=token.job_id, token_node=caller.principal_id, job_id=job_id, node=job.node_id,
                status=job.status, live=RUN_LIVE_STATES,
            )  # fmt: skip
            if resend is not None:
                return job  # the route decides against the proof it holds (Access.decide_resend)
        ctx.auth.allow(
            caller,
            resource=f"job:{job_id}",
            action=str(rule.scope),
            allowed=why is not None and dead is None,
            reason=(dead or why) if why is not None else _job_token_refusal(token, caller, job),
        )
    return job


def _job_token_refusal(token: VerifiedToken, caller: Caller, job: JobRecord) -> str:
    """The precise reason a job token is refused on ``job`` (C3)."""
    if token.job_id != job.job_id:
        return "job token is for another job or node"
    if job.node_id != caller.principal_id:
        # The job moved to another node (a re-dispatch after this node was lost): only its current node
        # may report on it, upload for it or fetch URLs for it.
        return (
            "job token is dead: the job was re-assigned to another node, only its current node may act on it"
        )
    return f"job token is dead: job is {job.status}"
