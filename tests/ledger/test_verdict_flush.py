"""The in-process verifier's verdict is on disk before its co-signature leaves, as in the service (F1, F2).

The verifier service keeps its own ``synchronous=FULL`` file. The in-process verifier (tests and
single-host tools) shares the escrow store's database, whose commits are only flushed by the store's group
fsync: its verdict book flushes after each write, so a pass a crash could lose is never co-signed.
"""

from __future__ import annotations

from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.ledger.cosign import CosignRequest, KeyCosigner
from cyxwiz.ledger.store import EscrowState
from cyxwiz.ledger.verdicts import verdict_of
from tests.ledger.conftest import NODE_PEER, World


def test_the_verdict_is_flushed_before_the_release_is_co_signed(local_world: World) -> None:
    ledger = local_world.ledger()
    ledger.create(job_id="job-f", user=local_world.user, amount=10_000)
    ledger.assign(job_id="job-f", node_wallet=local_world.node.pubkey(), node_peer_id=NODE_PEER)
    cosigner = ledger._verifier
    assert isinstance(cosigner, KeyCosigner)
    book = cosigner.policy.verdicts
    assert book is not None
    events: list[str] = []
    store_flush, cosign = ledger.store.flush, cosigner.cosign

    def flush() -> None:
        events.append(f"flush: pass recorded={book.passing('job-f') is not None}")
        store_flush()

    class Noting:  # the same co-signer, noting when its signature leaves
        def pubkey(self) -> Pubkey:
            return cosigner.pubkey()

        def cosign(self, request: CosignRequest) -> Signature:
            signature = cosign(request)
            events.append("co-signed")
            return signature

    book._flush = flush
    ledger._verifier = Noting()
    done = ledger.release(
        job_id="job-f", node_wallet=local_world.node.pubkey(), report=local_world.attest("job-f")
    )
    assert done.state is EscrowState.RELEASED
    assert events[:2] == ["flush: pass recorded=True", "co-signed"]  # durable first, then signed
    passing = book.passing("job-f")
    assert passing is not None and verdict_of(passing) == "pass"


def test_the_services_own_book_needs_no_flush(tmp_path: object) -> None:
    from pathlib import Path

    from cyxwiz.ledger.verdicts import VerdictBook

    book = VerdictBook.open(Path(str(tmp_path)) / "verdicts.db")
    try:
        assert book._flush is None  # its file is synchronous=FULL: each commit is flushed by SQLite
        with book._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        book.dispose()
