"""Replay cache and refresh-family stores (SPEC B5): same tests on memory, SQLite and real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from cyxwiz.tokens.refresh import Consumed
from tests.tokens.conftest import T0


def test_replay_cache_remembers_until_expiry(token_store: Any) -> None:
    exp = T0 + timedelta(minutes=5)
    assert token_store.remember("a" * 22, expires_at=exp, now=T0) is True
    assert token_store.remember("a" * 22, expires_at=exp, now=T0) is False
    assert token_store.remember("b" * 22, expires_at=exp, now=T0) is True
    # After expiry the entries may go: the exp check refuses those tokens anyway.
    assert token_store.purge(now=exp + timedelta(seconds=1)) >= 2
    assert token_store.remember("a" * 22, expires_at=exp + timedelta(hours=1), now=exp) is True


def test_replay_cache_concurrent_single_winner(token_store: Any, store_kind: str) -> None:
    """Eight threads race to use one one-shot jti: exactly one wins."""
    exp = T0 + timedelta(minutes=5)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        results.append(token_store.remember("race-jti-0123456789", expires_at=exp, now=T0))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_refresh_family_consume_and_reuse(token_store: Any) -> None:
    exp = T0 + timedelta(days=7)
    token_store.add(jti="r1" * 11, session_id="fam-1", subject="alice", expires_at=exp)
    token_store.add(jti="r2" * 11, session_id="fam-1", subject="alice", expires_at=exp)
    assert token_store.consume(jti="r1" * 11, session_id="fam-1", now=T0) is Consumed.OK
    assert not token_store.is_session_revoked("fam-1")
    assert token_store.consume(jti="r1" * 11, session_id="fam-1", now=T0) is Consumed.REUSED
    assert token_store.is_session_revoked("fam-1")
    # The still-unused sibling is dead too: the whole family went.
    assert token_store.consume(jti="r2" * 11, session_id="fam-1", now=T0) is Consumed.REVOKED


def test_refresh_unknown_and_cross_family(token_store: Any) -> None:
    exp = T0 + timedelta(days=7)
    token_store.add(jti="x1" * 11, session_id="fam-x", subject="alice", expires_at=exp)
    assert token_store.consume(jti="nope" * 5, session_id="fam-x", now=T0) is Consumed.UNKNOWN
    assert token_store.consume(jti="x1" * 11, session_id="fam-other", now=T0) is Consumed.UNKNOWN
    assert token_store.consume(jti="x1" * 11, session_id="fam-x", now=T0) is Consumed.OK


def test_revoke_session_and_purge_keeps_revocation(token_store: Any) -> None:
    exp = T0 + timedelta(days=7)
    token_store.add(jti="p1" * 11, session_id="fam-p", subject="bob", expires_at=exp)
    token_store.revoke_session("fam-p", reason="logout", now=T0)
    assert token_store.consume(jti="p1" * 11, session_id="fam-p", now=T0) is Consumed.REVOKED
    token_store.purge(now=exp + timedelta(days=1))
    assert token_store.is_session_revoked("fam-p")


@pytest.mark.slow
def test_concurrent_refresh_single_winner(token_store: Any, store_kind: str) -> None:
    """Two holders of one refresh token race: at most one OK, and the family ends revoked."""
    exp = T0 + timedelta(days=7)
    token_store.add(jti="c1" * 11, session_id="fam-c", subject="alice", expires_at=exp)
    results: list[Consumed] = []
    barrier = threading.Barrier(6)

    def attempt() -> None:
        barrier.wait()
        results.append(token_store.consume(jti="c1" * 11, session_id="fam-c", now=T0))

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(Consumed.OK) == 1
    assert Consumed.REUSED in results
    assert token_store.is_session_revoked("fam-c")
