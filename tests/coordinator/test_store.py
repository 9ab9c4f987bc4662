"""The coordinator store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import ConflictError, NotFoundError


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CoordinatorStore]:
    if request.param == "sqlite":
        s = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'c.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        s = CoordinatorStore.from_url(url)
        with s.engine.begin() as conn:
            for table in ("cyx_refresh_tokens", "cyx_sessions", "cyx_jobs", "cyx_nodes", "cyx_config"):
                conn.execute(sa.text(f"DELETE FROM {table}"))
    yield s
    s.engine.dispose()


def test_nodes_keyed_by_peer_id(store: CoordinatorStore) -> None:
    a = store.register_node(peer_id="12D3KooWA", subject="CN=a", cert_serial="1", hardware={"gpus": 1})
    again = store.register_node(peer_id="12D3KooWA", subject="CN=a", cert_serial="1", hardware={"gpus": 2})
    assert again.node_id == a.node_id and again.hardware == {"gpus": 2}
    assert store.node_by_peer("12D3KooWA") == again
    assert store.node_by_peer("nope") is None
    assert store.set_node_status(a.node_id, "banned").status == "banned"
    with pytest.raises(ConflictError):
        store.set_node_status(a.node_id, "king")
    with pytest.raises(NotFoundError):
        store.node("node-missing")


def test_sessions_and_refresh_reuse(store: CoordinatorStore) -> None:
    store.create_session(session_id="s1", principal_kind="node", principal_id="node-1")
    assert not store.is_session_revoked("s1")
    assert store.is_session_revoked("unknown")
    store.add_refresh(jti="j1", session_id="s1", expires_at=datetime.now(UTC) + timedelta(days=7))
    assert store.consume_refresh(jti="j1", session_id="s1")
    assert not store.consume_refresh(jti="j1", session_id="s1")  # reuse
    assert not store.consume_refresh(jti="j1", session_id="other")
    assert store.revoke_sessions_of("node-1") == 1
    assert store.is_session_revoked("s1")


def test_jobs_and_assignment(store: CoordinatorStore) -> None:
    node = store.register_node(peer_id="p", subject="CN=n", cert_serial="2", hardware={})
    job = store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=60)
    assert job.status == "submitted" and job.created_at.tzinfo is not None
    assigned = store.assign_job(job.job_id, node.node_id)
    assert assigned.node_id == node.node_id and assigned.status == "assigned"
    assert [j.job_id for j in store.list_jobs(user_id="alice")] == [job.job_id]
    assert store.list_jobs(user_id="bob") == []
    store.set_node_status(node.node_id, "draining")
    other = store.create_job(user_id="bob", spec={}, duration_s=1)
    with pytest.raises(ConflictError):
        store.assign_job(other.job_id, node.node_id)
    with pytest.raises(ConflictError):
        store.update_job(job.job_id, user_id="mallory")


def test_config_old_and_new(store: CoordinatorStore) -> None:
    assert store.set_config("min_payment", 1) is None
    assert store.set_config("min_payment", {"lamports": 2}) == 1
    assert store.all_config() == {"min_payment": {"lamports": 2}}
