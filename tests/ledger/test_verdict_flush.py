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


def test_a_verdict_already_on_disk_is_not_written_again(local_world: World, tmp_path: object) -> None:
    """The service records the verdict it signs, then again when it co-signs that job's release: the first
    one stands and none is ever deleted, so the second needs no write transaction (nor its conflict)."""
    from contextlib import AbstractContextManager
    from pathlib import Path
    from typing import Any

    from cyxwiz.ledger.attestation import ReportAttestation
    from cyxwiz.ledger.verdicts import VerdictBook

    path = Path(str(tmp_path)) / "verdicts.db"
    passed = ReportAttestation.parse(local_world.attest("job-k"))
    books = [VerdictBook.open(path), VerdictBook.open(path)]  # the second: another process, same file
    writes: list[int] = []
    for n, book in enumerate(books):
        real = book._write

        def counting(*, raw: bool = True, n: int = n, real: Any = real) -> AbstractContextManager[Any]:
            writes.append(n)
            return real(raw=raw)  # type: ignore[no-any-return]

        book._write = counting  # type: ignore[method-assign]
    try:
        books[0].record(passed)
        books[0].record(passed)  # the release's co-sign
        assert writes == [0] and books[0].passing("job-k") == passed.to_json()
        books[1].record(passed)  # not known there: its insert finds the row and gives way
        books[1].record(passed)
        assert writes == [0, 1]
        failed = ReportAttestation.parse(local_world.attest("job-k", verdict="fail"))
        books[0].record(failed)  # another kind of verdict for the job is its own row: written
        assert writes == [0, 1, 0]
    finally:
        for book in books:
            book.dispose()
