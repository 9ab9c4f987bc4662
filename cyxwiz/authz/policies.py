"""Composable authorization policies (SPEC C1–C3).

A policy answers ``check(principal, resource) -> Decision``; ``&`` and ``|`` combine policies and
:func:`authorize` turns a denial into :class:`~cyxwiz.errors.AuthorizationError` (403) naming the rule,
optionally recording the decision in the audit log. The ready-made policies at the bottom are what the
coordinator's handlers use, e.g. ``authorize(READ_JOB, principal, job, action="job.read")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cyxwiz.authz.principal import Principal
from cyxwiz.authz.roles import Permission, Role, permissions_for
from cyxwiz.errors import AuthorizationError

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink


@runtime_checkable
class JobResource(Protocol):
    """What the resource rule needs from a job (a coordinator row or model fits structurally)."""

    @property
    def job_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def assigned_node(self) -> str | None: ...


@runtime_checkable
class OwnedResource(Protocol):
    """Anything owned by one user (a wallet, a dataset)."""

    @property
    def user_id(self) -> str: ...


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    rule: str = "C1"
    field: str | None = None


ALLOW = Decision(True)


class Policy(Protocol):
    def check(self, principal: Principal, resource: object | None = None) -> Decision: ...


class BasePolicy:
    """Gives every policy ``&`` (all must allow) and ``|`` (any may allow)."""

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        raise NotImplementedError

    def __and__(self, other: Policy) -> AllOf:
        return AllOf(self, other)

    def __or__(self, other: Policy) -> AnyOf:
        return AnyOf(self, other)


class AllOf(BasePolicy):
    def __init__(self, *policies: Policy) -> None:
        self.policies: Sequence[Policy] = policies

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        for policy in self.policies:
            decision = policy.check(principal, resource)
            if not decision.allowed:
                return decision
        return ALLOW


class AnyOf(BasePolicy):
    def __init__(self, *policies: Policy) -> None:
        self.policies: Sequence[Policy] = policies

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        denials = []
        for policy in self.policies:
            decision = policy.check(principal, resource)
            if decision.allowed:
                return decision
            denials.append(decision)
        # Report the first denial's rule; the reason lists why every alternative failed.
        first = denials[0] if denials else Decision(False, "no policy allows this")
        return Decision(False, "; ".join(d.reason for d in denials) or first.reason, first.rule, first.field)


@dataclass(frozen=True)
class HasPermission(BasePolicy):
    """The role grants ``permission`` (C1) and the token carries it as a scope."""

    permission: Permission

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        if self.permission not in permissions_for(principal.role):
            return Decision(
                False, f"role {principal.role.value} may not {self.permission.value}", "C1", "role"
            )
        if self.permission.value not in principal.scopes:
            return Decision(False, f"scope {self.permission.value} not granted to this token", "C1", "scope")
        return ALLOW


@dataclass(frozen=True)
class HasRole(BasePolicy):
    roles: frozenset[Role]

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        if principal.role in self.roles:
            return ALLOW
        return Decision(False, f"role {principal.role.value} not allowed", "C1", "role")


class IsOwner(BasePolicy):
    """The caller is the user who owns the resource (C2)."""

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        if principal.role is not Role.NODE and principal.user_id is not None:
            owner = getattr(resource, "user_id", None)
            if owner is not None and owner == principal.user_id:
                return ALLOW
        return Decision(False, "not the owner", "C2", "user_id")


class IsAssignedNode(BasePolicy):
    """The caller is the node the job is assigned to; the node id came from its certificate (C2)."""

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        if principal.role is Role.NODE and principal.node_id is not None:
            assigned = getattr(resource, "assigned_node", None)
            if assigned is not None and assigned == principal.node_id:
                return ALLOW
        return Decision(False, "not the node this job is assigned to", "C2", "node_id")


class JobScoped(BasePolicy):
    """A job token reaches only its own job (C3); other principals pass through unchanged."""

    def check(self, principal: Principal, resource: object | None = None) -> Decision:
        if principal.job_id is None:
            return ALLOW
        if getattr(resource, "job_id", None) == principal.job_id:
            return ALLOW
        return Decision(False, "job token is scoped to another job", "C3", "job_id")


def authorize(
    policy: Policy,
    principal: Principal,
    resource: object | None = None,
    *,
    action: str,
    audit: AuditSink | None = None,
    resource_name: str | None = None,
) -> None:
    """Raise :class:`AuthorizationError` unless ``policy`` allows; record denials in ``audit``."""
    decision = policy.check(principal, resource)
    if decision.allowed:
        return
    if audit is not None:
        from cyxwiz.audit import events

        name = resource_name or _resource_name(resource)
        audit.record(
            events.access_decision(
                actor_id=principal.subject,
                actor_type=principal.role.value,
                resource=name,
                action=action,
                allowed=False,
                reason=f"{decision.reason} [rule {decision.rule}]",
            )
        )
    raise AuthorizationError(f"{action} denied: {decision.reason}", field=decision.field, rule=decision.rule)


def _resource_name(resource: object | None) -> str:
    job_id = getattr(resource, "job_id", None)
    if job_id is not None:
        return f"job:{job_id}"
    return type(resource).__name__ if resource is not None else "system"


P = Permission
#: Job visibility (C2): its owner, the node it is assigned to, admins — nobody else; job tokens only
#: their own job (C3).
READ_JOB: Policy = (
    HasPermission(P.JOB_READ) & (IsOwner() | IsAssignedNode() | HasPermission(P.JOB_READ_ALL)) & JobScoped()
)
SUBMIT_JOB: Policy = HasPermission(P.JOB_SUBMIT)
MANAGE_WALLET: Policy = HasPermission(P.WALLET_MANAGE) & IsOwner()
ACCEPT_JOB: Policy = HasPermission(P.JOB_ACCEPT) & IsAssignedNode()
EXECUTE_JOB: Policy = HasPermission(P.JOB_EXECUTE) & IsAssignedNode() & JobScoped()
REPORT_PROGRESS: Policy = HasPermission(P.METRICS_REPORT) & IsAssignedNode() & JobScoped()
CLAIM_PAYMENT: Policy = HasPermission(P.PAYMENT_CLAIM) & IsAssignedNode()
MANAGE_NODES: Policy = HasPermission(P.NODE_MANAGE)
CONFIGURE_SYSTEM: Policy = HasPermission(P.SYSTEM_CONFIGURE)
