"""The one authorization table (SPEC C1–C3): every route has a rule, and each rule's parts hold."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from cyxwiz.authz import (
    RULES,
    Credential,
    Permission,
    Resource,
    Role,
    job_assigned,
    job_token_for,
    job_visible,
    permissions_for,
)
from cyxwiz.coordinator.access import Allow
from cyxwiz.coordinator.api import create_app
from cyxwiz.coordinator.hooks import BasicHooks
from cyxwiz.coordinator.routes import admin, archive, datasets, jobs, nodes, tokens, wallet
from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import AuthorizationError
from cyxwiz.gateway.policy import ROUTES
from cyxwiz.tokens import KeyRing, TokenIssuer, TokenVerifier


def test_permission_table_matches_spec_c1() -> None:
    P = Permission
    assert {P.JOB_SUBMIT, P.JOB_READ, P.WALLET_MANAGE} <= permissions_for(Role.USER)
    assert {P.JOB_ACCEPT, P.METRICS_REPORT, P.PAYMENT_CLAIM} <= permissions_for(Role.NODE)
    assert {P.NODE_MANAGE, P.JOB_READ_ALL, P.SYSTEM_CONFIGURE} <= permissions_for(Role.ADMIN)
    assert not permissions_for(Role.USER) & {
        P.NODE_MANAGE,
        P.JOB_READ_ALL,
        P.SYSTEM_CONFIGURE,
        P.PAYMENT_CLAIM,
    }
    assert not permissions_for(Role.NODE) & {P.JOB_SUBMIT, P.WALLET_MANAGE, P.NODE_MANAGE, P.JOB_READ_ALL}


def test_every_coordinator_route_applies_a_rule_of_the_table() -> None:
    ring = KeyRing.generate()
    guarded = create_app(
        store=CoordinatorStore.from_url("sqlite://"),
        issuer=TokenIssuer(keyring=ring, issuer="i", audience="a"),
        verifier=TokenVerifier.from_keyring(ring, issuer="i", audience="a"),
        hooks=BasicHooks(),
    )
    app = guarded.app  # type: ignore[attr-defined]
    routes = [r for m in (admin, archive, datasets, jobs, nodes, tokens, wallet) for r in m.router.routes]
    routes += [r for r in app.routes if isinstance(r, APIRoute)]
    seen, operations = set(), set()
    for route in routes:
        assert isinstance(route, APIRoute)
        rules = [d.call.rule.name for d in route.dependant.dependencies if isinstance(d.call, Allow)]
        assert len(rules) == 1, f"{route.path} applies {rules}"
        seen.add(rules[0])
        operations |= {(route.path.replace(":path}", "}"), m.lower()) for m in route.methods}
    # Nothing is served that the walk above missed.
    assert operations == {(p, m) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert seen == {n for n in RULES if not n.startswith("gateway.")}


def test_every_gateway_route_has_a_node_rule() -> None:
    for route in ROUTES:
        assert route.rule.name == f"gateway.{route.scope}"
        assert route.rule.roles == {Role.NODE} and route.rule.credential is Credential.SESSION


def test_a_narrowed_token_cannot_reach_what_its_scopes_leave_out() -> None:
    """Alice's token was minted read-only: her role could submit, the token cannot (C1: role ∩ scope)."""
    RULES["jobs.read"].check_role_scope("user", ["job:read"])
    with pytest.raises(AuthorizationError) as exc:
        RULES["jobs.submit"].check_role_scope("user", ["job:read"])
    assert exc.value.field == "scope" and exc.value.rule == "C1"
    # Heartbeats and reads need their scope too (issue 18).
    for name in ("nodes.heartbeat", "jobs.list", "gateway.events_out", "gateway.flow_run"):
        with pytest.raises(AuthorizationError):
            RULES[name].check_role_scope(RULES[name].roles.__iter__().__next__().value, [])


def test_scope_beyond_role_gives_nothing() -> None:
    """A user token carrying admin scopes (mis-issued) still cannot act as admin."""
    greedy = ["node:manage", "system:configure", "job:read:all"]
    for name in ("admin.nodes", "admin.config.write", "admin.jobs"):
        with pytest.raises(AuthorizationError) as exc:
            RULES[name].check_role_scope("user", greedy)
        assert exc.value.field == "role"


def test_users_cannot_act_as_nodes() -> None:
    for name in ("tokens.job", "jobs.progress", "jobs.completion", "jobs.urls", "nodes.heartbeat"):
        with pytest.raises(AuthorizationError) as exc:
            RULES[name].check_role_scope("user", list(Permission))
        assert exc.value.field == "role"


def test_job_resource_rules() -> None:
    read_all = [Permission.JOB_READ_ALL.value]
    assert job_visible(role="user", principal_id="alice", scopes=[], owner="alice", node="n1") == "owner"
    assert job_visible(role="user", principal_id="mallory", scopes=[], owner="alice", node="n1") is None
    assert job_visible(role="node", principal_id="n1", scopes=[], owner="alice", node="n1") == "assigned node"
    assert job_visible(role="node", principal_id="n2", scopes=[], owner="alice", node="n1") is None
    assert job_visible(role="node", principal_id="n2", scopes=[], owner="alice", node=None) is None
    assert (
        job_visible(role="admin", principal_id="root", scopes=read_all, owner="alice", node=None) == "admin"
    )
    assert job_visible(role="admin", principal_id="root", scopes=[], owner="alice", node=None) is None
    assert job_assigned(principal_id="n1", node="n1", status="running")
    assert not job_assigned(principal_id="n1", node="n1", status="completed")
    assert not job_assigned(principal_id="n2", node="n1", status="running")
    running = {"job_id": "j1", "node": "n1", "status": "running"}
    assert job_token_for(token_job="j1", token_node="n1", **running)
    assert not job_token_for(token_job="j2", token_node="n1", **running)
    assert not job_token_for(token_job="j1", token_node="n2", **running)
    assert not job_token_for(token_job=None, token_node="n1", **running)
    for status in ("verifying", "completed", "released", "refunded", "cancelled", "failed"):
        assert not job_token_for(token_job="j1", token_node="n1", job_id="j1", node="n1", status=status)


def test_job_routes_use_job_resource_rules() -> None:
    assert RULES["jobs.read"].resource is Resource.JOB_VISIBLE
    assert {RULES[n].resource for n in ("jobs.progress", "jobs.completion", "jobs.urls")} == {
        Resource.JOB_TOKEN
    }
    assert {RULES[n].credential for n in ("jobs.progress", "jobs.completion", "jobs.urls")} == {
        Credential.JOB
    }
