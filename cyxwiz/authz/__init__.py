"""cyxwiz.authz — roles, scopes and resource-level rules as composable policies (SPEC C1–C3).

::

    principal = Principal.from_token(verified, peer_cert=der_from_tls)   # node id from the certificate
    authorize(READ_JOB, principal, job, action="job.read", audit=audit_log)
"""

from cyxwiz.authz.policies import (
    ACCEPT_JOB,
    CLAIM_PAYMENT,
    CONFIGURE_SYSTEM,
    EXECUTE_JOB,
    MANAGE_NODES,
    MANAGE_WALLET,
    READ_JOB,
    REPORT_PROGRESS,
    SUBMIT_JOB,
    AllOf,
    AnyOf,
    BasePolicy,
    Decision,
    HasPermission,
    HasRole,
    IsAssignedNode,
    IsOwner,
    JobResource,
    JobScoped,
    OwnedResource,
    Policy,
    authorize,
)
from cyxwiz.authz.principal import Principal, default_node_identity
from cyxwiz.authz.roles import (
    JOB_TOKEN_SCOPES,
    ROLE_PERMISSIONS,
    Permission,
    Role,
    default_scopes,
    permissions_for,
)

__all__ = [
    "ACCEPT_JOB",
    "CLAIM_PAYMENT",
    "CONFIGURE_SYSTEM",
    "EXECUTE_JOB",
    "JOB_TOKEN_SCOPES",
    "MANAGE_NODES",
    "MANAGE_WALLET",
    "READ_JOB",
    "REPORT_PROGRESS",
    "ROLE_PERMISSIONS",
    "SUBMIT_JOB",
    "AllOf",
    "AnyOf",
    "BasePolicy",
    "Decision",
    "HasPermission",
    "HasRole",
    "IsAssignedNode",
    "IsOwner",
    "JobResource",
    "JobScoped",
    "OwnedResource",
    "Permission",
    "Policy",
    "Principal",
    "Role",
    "authorize",
    "default_node_identity",
    "default_scopes",
    "permissions_for",
]
