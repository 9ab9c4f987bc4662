"""Refresh rotation and family revocation through SessionManager (SPEC B5), on every store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509

from cyxwiz.audit import MemorySink
from cyxwiz.errors import TokenBindingError
from cyxwiz.tokens import KeyRing, SessionManager, TokenIssuer, TokenKind, TokenVerifier
from cyxwiz.tokens.errors import RefreshReuseError, TokenClaimError, TokenRevokedError, TokenTypeError
from tests.tokens.conftest import AUDIENCE, ISSUER, Clock


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def manager(ring: KeyRing, clock: Clock, token_store: Any, sink: MemorySink) -> SessionManager:
    issuer = TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE, clock=clock, audit=sink)
    verifier = TokenVerifier.from_keyring(
        ring, issuer=ISSUER, audience=AUDIENCE, clock=clock, replay_cache=token_store, revocations=token_store
    )
    return SessionManager(issuer=issuer, verifier=verifier, store=token_store)


def test_refresh_rotates_and_reuse_revokes_family(
    manager: SessionManager, clock: Clock, sink: MemorySink
) -> None:
    first = manager.login(user_id="alice")
    assert first.session.claims["session_id"] == first.refresh.claims["session_id"]
    clock.advance(timedelta(hours=23))
    second = manager.refresh(first.refresh.token)
    assert second.refresh.jti != first.refresh.jti
    assert second.session.claims["session_id"] == first.session.claims["session_id"]
    assert sorted(second.session.claims["scope"]) == sorted(first.session.claims["scope"])
    third = manager.refresh(second.refresh.token)
    manager.verifier.verify(third.session.token, kind=TokenKind.SESSION)

    # A thief replays the first (already used) refresh token: the whole family dies.
    with pytest.raises(RefreshReuseError) as exc:
        manager.refresh(first.refresh.token)
    assert exc.value.code == "token-refresh-reuse" and exc.value.rule == "B5" and exc.value.http_status == 401
    with pytest.raises(TokenRevokedError):
        manager.refresh(third.refresh.token)  # the owner's newest refresh token is dead too
    with pytest.raises(TokenRevokedError):
        manager.verifier.verify(third.session.token, kind=TokenKind.SESSION)  # and the session tokens

    revocations = sink.of_action("token-family.revoke")
    assert len(revocations) == 1 and revocations[0].resource.endswith(str(first.session.claims["session_id"]))
    failures = [e for e in sink.events if e.action == "authenticate" and e.outcome.value == "failure"]
    assert len(failures) == 1 and failures[0].actor_id == "alice"
    issued = sink.of_action("token.issue")
    assert len(issued) == 6  # three pairs
    assert all(first.refresh.token not in e.model_dump_json() for e in sink.events)  # no token in the log


def test_logout_revokes(manager: SessionManager, sink: MemorySink) -> None:
    pair = manager.login(user_id="bob")
    manager.logout(str(pair.session.claims["session_id"]), actor_id="bob")
    with pytest.raises(TokenRevokedError):
        manager.refresh(pair.refresh.token)
    assert sink.of_action("token-family.revoke")[0].details["reason"] == "logout"


def test_refresh_token_is_not_a_session_token_and_vice_versa(manager: SessionManager) -> None:
    pair = manager.login(user_id="carol")
    with pytest.raises(TokenTypeError):
        manager.verifier.verify(pair.refresh.token, kind=TokenKind.SESSION)
    with pytest.raises(TokenTypeError):
        manager.refresh(pair.session.token)


def test_refresh_token_only_for_the_token_endpoint(manager: SessionManager) -> None:
    pair = manager.login(user_id="carol")
    with pytest.raises(TokenClaimError) as exc:
        manager.verifier.verify(pair.refresh.token, kind=TokenKind.REFRESH)  # API audience
    assert exc.value.field == "aud"


def test_node_refresh_is_cert_bound(
    manager: SessionManager, certs: tuple[x509.Certificate, x509.Certificate]
) -> None:
    cert_a, cert_b = certs
    pair = manager.login(node_id="node-a", cert=cert_a)
    with pytest.raises(TokenBindingError):
        manager.refresh(pair.refresh.token, peer_cert=cert_b)
    again = manager.refresh(pair.refresh.token, peer_cert=cert_a)
    assert again.session.claims["cnf"] == pair.session.claims["cnf"]
    manager.verifier.verify(again.session.token, kind=TokenKind.SESSION, peer_cert=cert_a)


def test_refresh_token_from_another_store_is_unknown(ring: KeyRing, clock: Clock, token_store: Any) -> None:
    """A refresh token minted without being recorded (e.g. by a leaked signing key elsewhere) is refused."""
    issuer = TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    manager = SessionManager(issuer=issuer, verifier=verifier, store=token_store)
    stray = issuer.refresh(session_id="f" * 32, user_id="alice")
    with pytest.raises(TokenRevokedError) as exc:
        manager.refresh(stray.token)
    assert exc.value.field in ("jti", "session_id")
