"""The escrow store on PostgreSQL (production), and Payment audit events (H2)."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from cyxwiz.audit import MemorySink
from cyxwiz.audit.events import EventType
from cyxwiz.errors import EscrowStateError
from cyxwiz.ledger import rawsql
from cyxwiz.ledger.chain import LocalChain
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.records import WrongRecipientError
from cyxwiz.ledger.store import EscrowState, EscrowStore
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, Pki, World, build_world


@pytest.fixture
def pg_world(postgres_url: str, pki: Pki) -> World:
    database = f"escrow_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {database}"))
    admin.dispose()
    url = sa.engine.make_url(postgres_url).set(database=database).render_as_string(hide_password=False)
    chain = LocalChain()
    return build_world(chain, url, fund=chain.airdrop, expire=chain.expire_blockhash, pki=pki)


@pytest.mark.postgres
def test_escrow_lifecycle_on_postgresql_with_u64_amounts(pg_world: World) -> None:
    w = pg_world
    ledger = w.ledger(minimum_payment=1)
    ledger.create(job_id="job-pg", user=w.user, amount=USER_FUNDS)
    ledger.assign(job_id="job-pg", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    assert (
        ledger.release(job_id="job-pg", node_wallet=w.node.pubkey(), report=w.attest("job-pg")).state
        is EscrowState.RELEASED
    )
    with pytest.raises(EscrowStateError, match="already released"):
        w.ledger().release(job_id="job-pg", node_wallet=w.node.pubkey(), report=w.attest("job-pg"))
    # Amounts beyond signed BIGINT survive the round trip (Numeric(20)).
    store: EscrowStore = ledger.store
    with store._engine.begin() as conn:
        conn.execute(sa.text("UPDATE cyxwiz_escrows SET amount = :a"), {"a": 2**64 - 1})
    assert store.get("job-pg")["amount"] == 2**64 - 1
    ledger.store.dispose()


def test_payment_events_are_recorded(local_world: World) -> None:
    w = local_world
    sink = MemorySink()
    ledger = w.ledger(audit=sink)
    ledger.create(job_id="job-au", user=w.user, amount=7_000)
    ledger.assign(job_id="job-au", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    record = ledger.release(job_id="job-au", node_wallet=w.node.pubkey(), report=w.attest("job-au"))
    create, release = sink.of_action("escrow.create"), sink.of_action("escrow.release")
    assert len(create) == 1 and len(release) == 1
    event = release[0]
    assert event.event_type == EventType.PAYMENT
    assert event.resource == "job:job-au"
    assert event.details["amount_lamports"] == 7_000
    assert event.details["tx_signature"] == record.settle_signature
    assert event.details["to"] == str(w.node.pubkey())
    serialized = repr(sink.events)
    for key in (w.payer, w.coordinator, w.verifier, w.user):
        assert str(key) not in serialized  # no secret key material in audit details


def test_refused_release_attempts_are_audited(local_world: World) -> None:
    w = local_world
    sink = MemorySink()
    ledger = w.ledger(audit=sink)
    ledger.create(job_id="job-f", user=w.user, amount=7_000)
    ledger.assign(job_id="job-f", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    with pytest.raises(WrongRecipientError):
        ledger.release(job_id="job-f", node_wallet=w.other_node.pubkey(), report=w.attest("job-f"))
    [event] = sink.of_action("escrow.release")
    assert event.outcome.value == "failure"
    assert event.details["reason"] == "refused: escrow-wrong-recipient"
    assert event.details["to"] == str(w.other_node.pubkey())


def test_two_processes_racing_to_release_pay_once(local_world: World) -> None:
    """Two ledger instances (separate engines, as two workers would have) release the same escrow at once."""
    w = local_world
    first, second = w.ledger(), w.ledger()
    first.create(job_id="job-race", user=w.user, amount=9_000)
    first.assign(job_id="job-race", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def attempt(ledger: EscrowLedger) -> None:
        barrier.wait()
        try:
            outcomes.append(
                ledger.release(
                    job_id="job-race", node_wallet=w.node.pubkey(), report=w.attest("job-race")
                ).state
            )
        except EscrowStateError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=attempt, args=(x,)) for x in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(type(o).__name__ for o in outcomes) == ["EscrowState", "EscrowStateError"]
    assert w.token(w.node) == 9_000
    assert w.token_total("job-race") == USER_FUNDS


def test_only_intents_wait_for_the_disk(local_world: World) -> None:
    """F2: intents are made durable (group-committed fsync of the WAL) before their transaction is sent;
    conclusions, recoverable from the chain by signature, and the assignment are not waited for."""
    w = local_world
    ledger = w.ledger()
    wal = ledger.store._wal
    assert wal is not None
    with ledger.store._concluding() as conn:
        # NORMAL: no flush per commit
        assert rawsql.execute(conn, "PRAGMA synchronous", {}).fetchone()[0] == 1
    before = wal.commits
    ledger.create(job_id="job-sync", user=w.user, amount=5_000)
    assert wal.commits == before + 1  # the funding intent; its conclusion waits for nothing
    ledger.assign(job_id="job-sync", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    assert wal.commits == before + 1
    ledger.release(job_id="job-sync", node_wallet=w.node.pubkey(), report=w.attest("job-sync"))
    # the in-process verifier's verdict, flushed before it co-signs; the release intent, before the send
    assert wal.commits == before + 3 and wal.flushes >= 3
    assert ledger.status(job_id="job-sync").state.value == "released"
