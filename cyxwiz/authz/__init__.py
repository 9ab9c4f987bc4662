"""cyxwiz.authz — roles, scopes and the one route authorization table (SPEC C1–C3).

::

    rule = RULES["jobs.read"]                      # credential, roles, scope, resource rule
    rule.check_role_scope(role, token.scopes)      # C1: role ∩ scopes
    job_visible(role=..., principal_id=..., scopes=..., owner=job.user_id, node=job.node_id)  # C2
"""

from cyxwiz.authz.policies import (
    OPEN_JOB_STATES,
    RULES,
    Credential,
    Resource,
    Rule,
    job_assigned,
    job_token_for,
    job_visible,
    rule,
)
from cyxwiz.authz.roles import (
    JOB_TOKEN_SCOPES,
    ROLE_PERMISSIONS,
    Permission,
    Role,
    default_scopes,
    permissions_for,
)

__all__ = [
    "JOB_TOKEN_SCOPES",
    "OPEN_JOB_STATES",
    "ROLE_PERMISSIONS",
    "RULES",
    "Credential",
    "Permission",
    "Resource",
    "Role",
    "Rule",
    "default_scopes",
    "job_assigned",
    "job_token_for",
    "job_visible",
    "permissions_for",
    "rule",
]
