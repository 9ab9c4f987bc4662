"""Authorization attacks (SPEC C1–C3): each tries to reach what the rules forbid and checks the refusal."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cyxwiz.audit import MemorySink
from cyxwiz.authz import (
    ACCEPT_JOB,
    CLAIM_PAYMENT,
    CONFIGURE_SYSTEM,
    EXECUTE_JOB,
    MANAGE_NODES,
    MANAGE_WALLET,
    READ_JOB,
    REPORT_PROGRESS,
    SUBMIT_JOB,
    HasRole,
    Permission,
    Principal,
    Role,
    authorize,
    permissions_for,
)
from cyxwiz.errors import AuthenticationError, AuthorizationError
from cyxwiz.tokens import TokenIssuer, TokenKind, TokenVerifier
from tests.authz.conftest import HOUR, Job, Node


def user(issuer: TokenIssuer, verifier: TokenVerifier, user_id: str, **kw: object) -> Principal:
    token = issuer.session(user_id=user_id, **kw)  # type: ignore[arg-type]
    return Principal.from_token(verifier.verify(token.token, kind=TokenKind.SESSION))


def node_session(issuer: TokenIssuer, verifier: TokenVerifier, node: Node) -> Principal:
    token = issuer.session(node_id=node.node_id, cert=node.cert)
    verified = verifier.verify(token.token, kind=TokenKind.SESSION, peer_cert=node.cert)
    return Principal.from_token(verified, peer_cert=node.cert)


def node_job(issuer: TokenIssuer, verifier: TokenVerifier, node: Node, job_id: str) -> Principal:
    token = issuer.job(node_id=node.node_id, job_id=job_id, cert=node.cert, duration=HOUR)
    der = node.cert.public_bytes(Encoding.DER)  # as a TLS socket hands it over
    verified = verifier.verify(token.token, kind=TokenKind.JOB, peer_cert=der)
    return Principal.from_token(verified, peer_cert=der)


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


def test_owner_assigned_node_and_admin_may_read(
    issuer: TokenIssuer, verifier: TokenVerifier, nodes: tuple[Node, Node], job_of_alice: Job
) -> None:
    authorize(READ_JOB, user(issuer, verifier, "alice"), job_of_alice, action="job.read")
    authorize(READ_JOB, node_session(issuer, verifier, nodes[0]), job_of_alice, action="job.read")
    authorize(READ_JOB, user(issuer, verifier, "root", role="admin"), job_of_alice, action="job.read")


def test_user_reading_another_users_job(
    issuer: TokenIssuer, verifier: TokenVerifier, job_of_alice: Job
) -> None:
    sink = MemorySink()
    mallory = user(issuer, verifier, "mallory")
    with pytest.raises(AuthorizationError) as exc:
        authorize(READ_JOB, mallory, job_of_alice, action="job.read", audit=sink)
    assert exc.value.rule == "C2" and exc.value.http_status == 403
    [event] = sink.events
    assert (event.actor_id, event.resource, event.outcome.value) == ("mallory", "job:job-alice-1", "denied")


def test_node_reading_job_assigned_to_another_node(
    issuer: TokenIssuer, verifier: TokenVerifier, nodes: tuple[Node, Node], job_of_alice: Job
) -> None:
    other = node_session(issuer, verifier, nodes[1])
    for policy in (READ_JOB, ACCEPT_JOB, CLAIM_PAYMENT):
        with pytest.raises(AuthorizationError) as exc:
            authorize(policy, other, job_of_alice, action="job")
        assert exc.value.rule == "C2" and exc.value.field in ("node_id", "user_id")


def test_scope_not_granted(issuer: TokenIssuer, verifier: TokenVerifier, job_of_alice: Job) -> None:
    """Alice's token was minted with read-only scope: her role could submit, the token cannot."""
    read_only = user(issuer, verifier, "alice", scopes=["job:read"])
    authorize(READ_JOB, read_only, job_of_alice, action="job.read")
    with pytest.raises(AuthorizationError) as exc:
        authorize(SUBMIT_JOB, read_only, action="job.submit")
    assert exc.value.field == "scope" and exc.value.rule == "C1"


def test_scope_beyond_role_gives_nothing(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    """A user token carrying admin scopes (mis-issued) still cannot act as admin: role ∩ scope."""
    greedy = user(issuer, verifier, "alice", scopes=["node:manage", "system:configure", "job:read:all"])
    for policy in (MANAGE_NODES, CONFIGURE_SYSTEM):
        with pytest.raises(AuthorizationError) as exc:
            authorize(policy, greedy, action="admin")
        assert exc.value.field == "role"


def test_wallet_only_for_its_owner(issuer: TokenIssuer, verifier: TokenVerifier, job_of_alice: Job) -> None:
    authorize(MANAGE_WALLET, user(issuer, verifier, "alice"), job_of_alice, action="wallet")
    with pytest.raises(AuthorizationError):
        authorize(MANAGE_WALLET, user(issuer, verifier, "bob"), job_of_alice, action="wallet")


def test_job_token_reaches_only_its_own_job(
    issuer: TokenIssuer, verifier: TokenVerifier, nodes: tuple[Node, Node], job_of_alice: Job
) -> None:
    principal = node_job(issuer, verifier, nodes[0], job_of_alice.job_id)
    authorize(EXECUTE_JOB, principal, job_of_alice, action="job.execute")
    authorize(REPORT_PROGRESS, principal, job_of_alice, action="job.progress")
    # Another job also assigned to the same node: the job token is scoped to the first one (C3).
    sibling = Job(job_id="job-alice-2", user_id="alice", assigned_node=nodes[0].node_id)
    with pytest.raises(AuthorizationError) as exc:
        authorize(EXECUTE_JOB, principal, sibling, action="job.execute")
    assert exc.value.rule == "C3"
    # And a job token cannot claim payment or accept jobs: its scopes are job:execute + metrics:report.
    with pytest.raises(AuthorizationError) as exc:
        authorize(CLAIM_PAYMENT, principal, job_of_alice, action="payment.claim")
    assert exc.value.field == "scope"


def test_node_identity_comes_from_certificate(
    issuer: TokenIssuer, verifier: TokenVerifier, nodes: tuple[Node, Node], job_of_alice: Job
) -> None:
    node1, node2 = nodes
    # node-2 holds its own cert but got a token naming node-1 (e.g. by lying in a registration body):
    forged = issuer.session(node_id=node1.node_id, cert=node2.cert)
    verified = verifier.verify(forged.token, kind=TokenKind.SESSION, peer_cert=node2.cert)
    with pytest.raises(AuthenticationError) as exc:
        Principal.from_token(verified, peer_cert=node2.cert)
    assert exc.value.field == "node_id" and exc.value.rule == "C2"
    # A node principal cannot be built without the TLS certificate at all.
    honest = issuer.session(node_id=node1.node_id, cert=node1.cert)
    verified = verifier.verify(honest.token, kind=TokenKind.SESSION, peer_cert=node1.cert)
    with pytest.raises(AuthenticationError) as exc:
        Principal.from_token(verified)
    assert exc.value.rule == "C2"
    with pytest.raises(AuthenticationError):
        Principal.from_token(verified, peer_cert=node2.cert)


def test_users_cannot_act_as_nodes(issuer: TokenIssuer, verifier: TokenVerifier, job_of_alice: Job) -> None:
    alice = user(issuer, verifier, "alice")
    for policy in (ACCEPT_JOB, EXECUTE_JOB, REPORT_PROGRESS, CLAIM_PAYMENT):
        with pytest.raises(AuthorizationError) as exc:
            authorize(policy, alice, job_of_alice, action="node-only")
        assert exc.value.field == "role"


def test_composition(issuer: TokenIssuer, verifier: TokenVerifier, job_of_alice: Job) -> None:
    admin = user(issuer, verifier, "root", role="admin")
    only_admins = HasRole(frozenset({Role.ADMIN}))
    authorize(only_admins & READ_JOB, admin, job_of_alice, action="x")
    with pytest.raises(AuthorizationError):
        authorize(only_admins, user(issuer, verifier, "alice"), action="x")
    authorize(only_admins | READ_JOB, user(issuer, verifier, "alice"), job_of_alice, action="x")
