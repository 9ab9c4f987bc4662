"""Roles and the permission table of SPEC C1.

A permission is also the scope string carried in tokens: a call needs the permission in the caller's
role *and* in the token's ``scope`` list (a token may carry fewer scopes than its role allows, never more).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class Role(enum.StrEnum):
    USER = "user"
    NODE = "node"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    # user (C1): submit jobs, view own jobs, manage own wallet
    JOB_SUBMIT = "job:submit"
    JOB_READ = "job:read"
    WALLET_MANAGE = "wallet:manage"
    # node (C1): accept jobs, report progress, claim payments; job:execute is the job token's (C3)
    JOB_ACCEPT = "job:accept"
    JOB_EXECUTE = "job:execute"
    METRICS_REPORT = "metrics:report"
    PAYMENT_CLAIM = "payment:claim"
    # admin (C1): manage nodes, view all jobs, configure system
    NODE_MANAGE = "node:manage"
    JOB_READ_ALL = "job:read:all"
    SYSTEM_CONFIGURE = "system:configure"
    # p2p tokens: talk directly to the node named in the token
    P2P_CONNECT = "p2p:connect"


P = Permission
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {
        Role.USER: frozenset({P.JOB_SUBMIT, P.JOB_READ, P.WALLET_MANAGE, P.P2P_CONNECT}),
        Role.NODE: frozenset({P.JOB_ACCEPT, P.JOB_EXECUTE, P.JOB_READ, P.METRICS_REPORT, P.PAYMENT_CLAIM}),
        Role.ADMIN: frozenset({P.NODE_MANAGE, P.JOB_READ, P.JOB_READ_ALL, P.SYSTEM_CONFIGURE}),
    }
)

#: What a job token may do (ARCHITECTURE "Dispatch"): run that one job and report on it, nothing else.
JOB_TOKEN_SCOPES: tuple[str, ...] = (P.JOB_EXECUTE.value, P.METRICS_REPORT.value)


def permissions_for(role: Role | str) -> frozenset[Permission]:
    return ROLE_PERMISSIONS[Role(role)]


def default_scopes(role: Role | str) -> list[str]:
    """Scopes a session token of ``role`` carries by default: all the role's permissions, sorted."""
    return sorted(p.value for p in permissions_for(role))
