"""The one authorization table: every coordinator and gateway route's rule (SPEC C1–C3).

A rule is (credential, roles, scope, resource). The credential says what authenticates the call; the
role must be one of ``roles`` and — role ∩ token scopes — the token must carry ``scope``; the resource rule
names what ties the caller to the object the route names (a job's owner, the node a job is assigned to,
the node's own flow run ...). The coordinator applies a rule as a FastAPI dependency
(:mod:`cyxwiz.coordinator.access`); the gateway looks its allow-listed routes up here
(:mod:`cyxwiz.gateway.policy`). Resource rules that need state (the store, the gateway's view of a node's
runs) are checked by their owner; the pure ones over a job are the predicates at the bottom.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cyxwiz.authz.roles import Permission, Role, permissions_for
from cyxwiz.errors import AuthorizationError


class Credential(enum.StrEnum):
    CERTIFICATE = "certificate"  # the verified client certificate alone (register, login)
    SESSION = "session"  # a session token bound to the caller's certificate when it has one
    JOB = "job"  # a job token: that one job, bound to the node's certificate (C3)
    REFRESH = "refresh"  # a refresh token in the body (rotates on use, B5)
    NONE = "none"  # public (health)


class Resource(enum.StrEnum):
    NONE = "none"  # nothing beyond role and scope
    SELF = "self"  # the caller's own row: a node from its certificate, a user from the token (C2)
    OWN_JOBS = "own-jobs"  # a listing narrowed to what the caller may see (C2)
    JOB_VISIBLE = "job-visible"  # the job's owner, its assigned node, an admin with job:read:all (C2)
    JOB_ASSIGNED = "job-assigned"  # the node the job is assigned to, while the job is open
    JOB_TOKEN = "job-token"  # noqa: S105 (a rule name) — a job token of this job, held by its assigned node, while it is open (C3)
    ANY = "any"  # admin routes: any object (the role and scope are the rule)
    # gateway (Prefect API as the node sees it)
    POOL = "pool"  # the GPU work pool, never another
    OWN_QUEUE = "own-queue"  # the node's own work queue (requests and answers narrowed to it)
    OWN_RUN = "own-run"  # a flow run in the node's queue (+ the job token when it carries a job)
    OWN_RUN_REF = "own-run-ref"  # a deployment or flow one of the node's runs references
    OWN_LOGS = "own-logs"  # every log line names one of the node's runs
    OWN_ARTIFACT = "own-artifact"  # an artifact of one of the node's runs, in the node's namespace
    OWN_EVENTS = "own-events"  # every resource an event names is the node's run or worker
    OWN_WORKER = "own-worker"  # the worker channel: the node's worker name and queue only


@dataclass(frozen=True, kw_only=True)
class Rule:
    name: str
    credential: Credential
    roles: frozenset[Role]
    scope: Permission | None
    resource: Resource

    def check_role_scope(self, role: str, scopes: Iterable[str]) -> None:
        """Raise :class:`AuthorizationError` unless ``role`` may call and its token carries the scope."""
        if role not in {r.value for r in self.roles}:
            raise AuthorizationError(f"role {role!r} may not call {self.name}", field="role", rule="C1")
        if self.scope is None:
            return
        if self.scope not in permissions_for(role) or self.scope.value not in set(scopes):
            raise AuthorizationError(f"token lacks scope {self.scope.value!r}", field="scope", rule="C1")


def _rule(
    name: str, credential: Credential, roles: str, scope: Permission | None, resource: Resource
) -> Rule:
    return Rule(
        name=name,
        credential=credential,
        roles=frozenset(Role(r) for r in roles.split("|") if r),
        scope=scope,
        resource=resource,
    )


C, P, R = Credential, Permission, Resource
_ALL = "user|node|admin"

# One line per route: name, credential, roles, scope, resource rule.
_TABLE: tuple[Rule, ...] = (
    # coordinator: nodes
    _rule("nodes.register", C.CERTIFICATE, "node", None, R.SELF),
    _rule("nodes.heartbeat", C.SESSION, "node", P.JOB_ACCEPT, R.SELF),
    _rule("nodes.renew", C.SESSION, "node", P.JOB_ACCEPT, R.SELF),
    # coordinator: tokens
    _rule("tokens.login", C.CERTIFICATE, "user", None, R.SELF),
    _rule("tokens.refresh", C.REFRESH, _ALL, None, R.SELF),
    _rule("tokens.job", C.SESSION, "node", P.JOB_ACCEPT, R.JOB_ASSIGNED),
    # coordinator: jobs
    _rule("jobs.submit", C.SESSION, "user", P.JOB_SUBMIT, R.NONE),
    _rule("jobs.fund", C.SESSION, "user", P.JOB_SUBMIT, R.JOB_VISIBLE),
    _rule("jobs.list", C.SESSION, _ALL, P.JOB_READ, R.OWN_JOBS),
    _rule("jobs.read", C.SESSION, _ALL, P.JOB_READ, R.JOB_VISIBLE),
    # a user role only: of "visible", that leaves the job's owner (C2); issue 20's dispute window
    _rule("jobs.dispute", C.SESSION, "user", P.JOB_SUBMIT, R.JOB_VISIBLE),
    _rule("jobs.progress", C.JOB, "node", P.METRICS_REPORT, R.JOB_TOKEN),
    _rule("jobs.completion", C.JOB, "node", P.JOB_EXECUTE, R.JOB_TOKEN),
    _rule("jobs.urls", C.JOB, "node", P.JOB_EXECUTE, R.JOB_TOKEN),
    # coordinator: datasets (an upload lands in the caller's own area only)
    _rule("datasets.upload", C.SESSION, "user", P.JOB_SUBMIT, R.SELF),
    # coordinator: archives (a job's owner, or an admin who may read every job; never a node: C2)
    _rule("archive.list", C.SESSION, "user|admin", P.JOB_READ, R.OWN_JOBS),
    _rule("archive.read", C.SESSION, "user|admin", P.JOB_READ, R.JOB_VISIBLE),
    # coordinator: wallet
    _rule("wallet.read", C.SESSION, "user", P.WALLET_MANAGE, R.SELF),
    # coordinator: admin
    _rule("admin.nodes", C.SESSION, "admin", P.NODE_MANAGE, R.ANY),
    _rule("admin.node_action", C.SESSION, "admin", P.NODE_MANAGE, R.ANY),
    _rule("admin.jobs", C.SESSION, "admin", P.JOB_READ_ALL, R.ANY),
    _rule("admin.config.read", C.SESSION, "admin", P.SYSTEM_CONFIGURE, R.ANY),
    _rule("admin.config.write", C.SESSION, "admin", P.SYSTEM_CONFIGURE, R.ANY),
    _rule("meta.health", C.NONE, "", None, R.NONE),
    # gateway: the Prefect API as a node's worker and flow runs call it
    _rule("gateway.global", C.SESSION, "node", None, R.NONE),
    _rule("gateway.pool", C.SESSION, "node", P.JOB_ACCEPT, R.POOL),
    _rule("gateway.queue_filter", C.SESSION, "node", P.JOB_ACCEPT, R.OWN_QUEUE),
    _rule("gateway.scheduled_runs", C.SESSION, "node", P.JOB_ACCEPT, R.OWN_QUEUE),
    _rule("gateway.work_queue", C.SESSION, "node", P.JOB_ACCEPT, R.OWN_QUEUE),
    _rule("gateway.run_filter", C.SESSION, "node", P.JOB_READ, R.OWN_QUEUE),
    _rule("gateway.flow_run", C.SESSION, "node", P.JOB_ACCEPT, R.OWN_RUN),
    _rule("gateway.deployment", C.SESSION, "node", P.JOB_READ, R.OWN_RUN_REF),
    _rule("gateway.flow", C.SESSION, "node", P.JOB_READ, R.OWN_RUN_REF),
    _rule("gateway.logs", C.SESSION, "node", P.METRICS_REPORT, R.OWN_LOGS),
    _rule("gateway.artifact_create", C.SESSION, "node", P.METRICS_REPORT, R.OWN_ARTIFACT),
    _rule("gateway.artifact", C.SESSION, "node", P.METRICS_REPORT, R.OWN_ARTIFACT),
    _rule("gateway.events_in", C.SESSION, "node", P.METRICS_REPORT, R.OWN_EVENTS),
    _rule("gateway.events_out", C.SESSION, "node", P.JOB_READ, R.OWN_EVENTS),
    _rule("gateway.worker_connect", C.SESSION, "node", P.JOB_ACCEPT, R.OWN_WORKER),
    _rule("gateway.worker_heartbeat", C.SESSION, "node", P.JOB_ACCEPT, R.OWN_WORKER),
)

RULES: Mapping[str, Rule] = MappingProxyType({rule.name: rule for rule in _TABLE})

#: Job states in which the node still holds the job (a job token is alive, URLs may be issued).
OPEN_JOB_STATES = frozenset({"assigned", "running"})
#: Job states in which the node's run may still report on itself through the gateway: after the proof
#: is in ("verifying") its outputs are frozen, but the run still sets its final state and logs. Once the
#: job is settled (released, refunded, failed, cancelled, ...) the job token reaches nothing.
RUN_LIVE_STATES = OPEN_JOB_STATES | {"verifying"}
#: Rules whose job token still reaches the route while the job is verifying: a node re-sends its proof when
#: the answer to the first send was lost (a coordinator restart, issue 21), and the route accepts exactly
#: the proof it already holds, nothing else (F2).
RESENDABLE_AFTER_PROOF = frozenset({"jobs.completion"})


def rule(name: str) -> Rule:
    return RULES[name]


# --- pure resource rules over a job (C2, C3) -----------------------------------------------------------


def job_visible(
    *, role: str, principal_id: str, scopes: Iterable[str], owner: str, node: str | None
) -> str | None:
    """Why ``principal`` may read the job (None when it may not): its owner, assigned node, or an admin."""
    if role == "admin":
        return "admin" if Permission.JOB_READ_ALL.value in set(scopes) else None
    if role == "node":
        return "assigned node" if node is not None and node == principal_id else None
    return "owner" if owner == principal_id else None


def job_assigned(*, principal_id: str, node: str | None, status: str) -> bool:
    """The node holds the job: it is assigned to it and not yet finished."""
    return node is not None and node == principal_id and status in OPEN_JOB_STATES


def job_token_for(
    *,
    token_job: str | None,
    token_node: str | None,
    job_id: str,
    node: str | None,
    status: str,
    live: frozenset[str] = OPEN_JOB_STATES,
) -> str | None:
    """Why a job token may act on this job, or None (C3): its own job, held by the node the job is
    assigned to, while the job is open. A job whose proof is in, or that ended or was revoked
    (``revoke_job_token``), has no live job token: its outputs are frozen."""
    if token_job is None or token_job != job_id or node is None or token_node != node:
        return None
    return "job token for this job" if status in live else None
