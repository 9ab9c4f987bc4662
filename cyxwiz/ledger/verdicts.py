"""The verifier's own book of verdicts: the fact a compromised control plane cannot rewrite (F1, threat I).

The escrow store is the control plane's database, and a process holding the coordinator key can edit it
(drop a report, put a settling escrow back to ``locked``). Refunds are co-signed by coordinator + verifier,
so if the verifier decided "refund or not" from that database, a coordinator that skipped the release of a
job whose verification passed could still take the money back to the user. The verifier therefore keeps,
in a file only its own process opens (mode 0600, flushed to disk before the attestation leaves), every
verdict it signed and every passing report it co-signed a release for; once a job has a passing verdict
here, the verifier co-signs no refund and no slash for it — only the release, or the arbiter's resolve of
a dispute.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cyxwiz.errors import CyxwizError
from cyxwiz.ledger import rawsql
from cyxwiz.ledger.attestation import ReportAttestation
from cyxwiz.ledger.cosign import CosignRefusedError

metadata = sa.MetaData()
#: how many recorded (job, verdict) keys a book remembers (about 150 bytes each)
_KNOWN_VERDICTS = 4096

verdicts = sa.Table(
    "cyxwiz_verifier_verdicts",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("verdict", sa.String(8), primary_key=True),
    sa.Column("escrow", sa.String(44), nullable=False),
    sa.Column("report_sha256", sa.String(64), nullable=False),
    sa.Column("attestation", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
rawsql.register(verdicts)
#: The whole answer to each verification request (report + attestation), by job and by the bound fields the
#: attestation signs: a request repeated after a lost answer (the service restarted, the lifecycle retried)
#: gets the same verdict back, not a second verification, audit record or verdict (issue 21, F2).
answers = sa.Table(
    "cyxwiz_verifier_answers",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("request_sha256", sa.String(64), primary_key=True),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
rawsql.register(answers)
#: The newest stake withdrawal (its signed ``issued_at``, Unix ms) this verifier co-signed per stake: a
#: node's signed withdrawal pays once, never again after a re-stake (issue 17; F1, F2).
withdrawals = sa.Table(
    "cyxwiz_verifier_withdrawals",
    metadata,
    sa.Column("stake_peer_id", sa.String(128), primary_key=True),
    sa.Column("issued_at", sa.BigInteger, nullable=False),
    sa.Column("wallet", sa.String(44), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
#: When this verifier first saw the node's signed request to withdraw a stake (its own clock): the stake's
#: cool-down runs from here, not from the stake book's ``unstake_requested_at`` (a row the coordinator
#: could backdate); cleared when a withdrawal is co-signed, so a re-stake's cool-down starts afresh.
unstakes = sa.Table(
    "cyxwiz_verifier_unstakes",
    metadata,
    sa.Column("stake_peer_id", sa.String(128), primary_key=True),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
)


class ReleaseOwedError(CosignRefusedError):
    """The job's verification passed: its escrow is owed to the node, a refund or slash is refused (F1)."""

    code = "escrow-release-owed"
    http_status = 409


def _durable_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a verdict is on disk before its attestation is returned
    cursor.close()


class VerdictBook:
    """Verdicts by job (first of each kind kept); safe to share across threads."""

    def __init__(
        self,
        *,
        engine: sa.engine.Engine,
        fast: rawsql.SqlitePool | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        #: the escrow store's plain connections, when this book shares its database (in-process verifier)
        self._fast = fast
        #: makes a commit durable where the database does not at commit: the escrow store's group flush
        #: when this book shares its ``synchronous=NORMAL`` database (the service's own file is FULL)
        self._flush = flush
        self._owns_fast = False  # an in-process verifier shares the escrow store's connections
        self._conflicts = rawsql.integrity_errors(engine)
        #: (job, verdict) rows known to be on disk, inserted here or found there: the first one stands and
        #: none is ever deleted, so recording it again (a release co-signed for the verdict this service
        #: signed) is a no-op that need not reach the database. Bounded; a miss only costs the insert.
        self._known: dict[tuple[str, str], None] = {}
        metadata.create_all(engine)

    @classmethod
    def open(cls, path: Path) -> VerdictBook:
        """The verifier service's own file (0600, created before SQLite opens it)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _durable_sqlite)
        # Every co-signed release records its report here before the signature leaves: plain sqlite3
        # connections (same pragmas) spare each request SQLAlchemy's statement and connection layers.
        book = cls(engine=engine, fast=rawsql.SqlitePool(engine=engine, database=path, setup=_durable_sqlite))
        book._owns_fast = True
        return book

    def record(self, attestation: ReportAttestation) -> None:
        """Remember a verdict this verifier signed or a passing report it co-signed a release for."""
        key = (attestation.job_id, attestation.verdict)
        if key in self._known:
            return
        row = {
            "job_id": attestation.job_id,
            "verdict": attestation.verdict,
            "escrow": attestation.escrow,
            "report_sha256": attestation.report_sha256,
            "attestation": attestation.to_json(),
            "recorded_at": dt.datetime.now(dt.UTC),
        }
        try:
            with self._write() as conn:
                rawsql.insert(conn, verdicts.name, row)
        except self._conflicts:
            pass  # this job already has a verdict of this kind: the first one stands
        if len(self._known) >= _KNOWN_VERDICTS:
            self._known.clear()  # threads share it: no partial eviction mid-iteration
        self._known[key] = None

    def record_answer(self, job_id: str, *, request_sha256: str, answer: dict[str, Any]) -> None:
        """Keep the answer given to a verification request (the first one stands)."""
        row = {"job_id": job_id, "request_sha256": request_sha256, "answer": json.dumps(answer),
               "recorded_at": dt.datetime.now(dt.UTC)}  # fmt: skip
        try:
            with self._write() as conn:
                rawsql.insert(conn, answers.name, row)
        except self._conflicts:
            pass

    def answer(self, job_id: str, *, request_sha256: str) -> dict[str, Any] | None:
        """The answer already given to this request for the job, if any."""
        query = sa.select(answers.c.answer).where(
            answers.c.job_id == job_id, answers.c.request_sha256 == request_sha256
        )
        with self._engine.connect() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else dict(json.loads(value))

    def record_upheld(self, job_id: str, *, escrow: str, message_sha256: str) -> None:
        """The arbiter's resolve refunding the user of a disputed job, about to be co-signed here: what a
        slash without a fraud report rests on once the chain shows it landed (:func:`require_upheld`).
        Every such message is kept (the escrow store's word for which one counts is the coordinator's)."""
        self._append(job_id, "upheld", escrow, message_sha256)

    def record_slash(self, job_id: str, *, escrow: str, message_sha256: str) -> None:
        """A slash for this job about to be co-signed here (its message's SHA-256): what a withdrawal of
        the node's stake waits for once the chain shows it landed (:mod:`cyxwiz.ledger.unstake_rule`)."""
        self._append(job_id, "slashed", escrow, message_sha256)

    def _append(self, job_id: str, verdict: str, escrow: str, message_sha256: str) -> None:
        mine = sa.and_(verdicts.c.job_id == job_id, verdicts.c.verdict == verdict)
        entry = [escrow, message_sha256]
        with self._write(raw=False) as conn:
            held = conn.execute(sa.select(verdicts.c.attestation).where(mine)).scalar()
            if held is None:
                conn.execute(verdicts.insert().values(
                    job_id=job_id, verdict=verdict, escrow=escrow, report_sha256="",
                    attestation=json.dumps([entry]), recorded_at=dt.datetime.now(dt.UTC),
                ))  # fmt: skip
            elif entry not in (entries := _entries(held)):
                conn.execute(verdicts.update().where(mine).values(attestation=json.dumps([*entries, entry])))

    def record_dispute(self, job_id: str, *, account: str, node_peer_id: str) -> None:
        """A move into the job's dispute escrow ``account`` about to be co-signed here: while it holds
        funds the job is not settled (the node's stake waits, :mod:`cyxwiz.ledger.unstake_rule`)."""
        self._append(job_id, "disputed", account, node_peer_id)

    def disputes(self) -> list[tuple[str, str, str]]:
        """(job, dispute escrow, the node the escrow record named) of every dispute co-signed here."""
        query = sa.select(verdicts.c.job_id, verdicts.c.attestation).where(verdicts.c.verdict == "disputed")
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(str(job), account, peer) for job, value in rows for account, peer in _entries(value)]

    def upheld_jobs(self) -> list[str]:
        """Every job whose dispute refund by the arbiter was co-signed here (a fraud the arbiter upheld)."""
        query = sa.select(verdicts.c.job_id).where(verdicts.c.verdict == "upheld")
        with self._engine.connect() as conn:
            return [str(job) for job in conn.execute(query).scalars()]

    def slash_messages(self, job_id: str) -> frozenset[str]:
        """The SHA-256 of every slash message of this job co-signed here (landed or not)."""
        query = sa.select(verdicts.c.attestation).where(
            verdicts.c.job_id == job_id, verdicts.c.verdict == "slashed"
        )
        with self._engine.connect() as conn:
            value = conn.execute(query).scalar()
        return frozenset(digest for _escrow, digest in _entries(value))

    def judged(self, peers: Collection[str]) -> list[ReportAttestation]:
        """Every verdict this verifier signed (or release it co-signed) naming one of ``peers``."""
        named = sa.or_(sa.false(), *(verdicts.c.attestation.contains(f'"node_peer_id":"{p}"') for p in peers))
        query = sa.select(verdicts.c.attestation).where(
            verdicts.c.verdict.in_(("pass", "fail", "fraud")), named
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).scalars().all()
        found = (ReportAttestation.parse(text) for text in rows)
        return [a for a in found if a.node_peer_id in peers]

    def upheld_messages(self, job_id: str, *, escrow: str) -> frozenset[str]:
        """The SHA-256 of every arbiter's refund of this job's dispute escrow (of ``escrow``) co-signed
        here; whether one landed is the chain's to say."""
        query = sa.select(verdicts.c.attestation).where(
            verdicts.c.job_id == job_id, verdicts.c.verdict == "upheld"
        )
        with self._engine.connect() as conn:
            value = conn.execute(query).scalar()
        return frozenset(digest for account, digest in _entries(value) if account == escrow)

    def newest_withdrawal(self, stake_peer_id: str) -> int | None:
        """The ``issued_at`` of the newest signed withdrawal of this stake co-signed here, if any."""
        query = sa.select(withdrawals.c.issued_at).where(withdrawals.c.stake_peer_id == stake_peer_id)
        with self._engine.connect() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else int(value)

    def unstake_requested(self, stake_peer_id: str, *, at: dt.datetime) -> dt.datetime:
        """When the cool-down of this stake started on this verifier's clock: ``at`` for the first signed
        request seen (since the last withdrawal co-signed here), else the time recorded then."""
        query = sa.select(unstakes.c.requested_at).where(unstakes.c.stake_peer_id == stake_peer_id)
        try:
            with self._write(raw=False) as conn:
                held = conn.execute(query).scalar()
                if held is None:
                    conn.execute(unstakes.insert().values(stake_peer_id=stake_peer_id, requested_at=at))
                    return at
        except self._conflicts:  # another request recorded it meanwhile: that one is the start
            with self._engine.connect() as conn:
                held = conn.execute(query).scalar()
        if not isinstance(held, dt.datetime):
            raise CosignRefusedError("the unstake request could not be recorded", field="peer_id", rule="F2")
        return held if held.tzinfo is not None else held.replace(tzinfo=dt.UTC)

    def record_withdrawal(self, stake_peer_id: str, *, issued_at: int, wallet: str) -> bool:
        """Mark a signed withdrawal used, before its co-signature leaves; False (nothing written) when one
        as new or newer was co-signed meanwhile (two requests raced with the same statement)."""
        mine = withdrawals.c.stake_peer_id == stake_peer_id
        values = {"issued_at": issued_at, "wallet": wallet, "recorded_at": dt.datetime.now(dt.UTC)}
        try:
            with self._write(raw=False) as conn:
                held = conn.execute(sa.select(withdrawals.c.issued_at).where(mine)).scalar()
                # the cool-down of a later stake starts with its own first request
                conn.execute(unstakes.delete().where(unstakes.c.stake_peer_id == stake_peer_id))
                if held is None:
                    conn.execute(withdrawals.insert().values(stake_peer_id=stake_peer_id, **values))
                    return True
                # compare-and-set: a concurrent writer of a newer one leaves this one nothing to update
                moved = conn.execute(
                    withdrawals.update().where(mine, withdrawals.c.issued_at < issued_at).values(**values)
                )
                if not moved.rowcount:
                    raise _Lost
                return True
        except self._conflicts:
            return False  # another request inserted the first mark of this stake meanwhile
        except _Lost:
            return False  # a newer one was marked meanwhile: nothing of this one is written

    @contextmanager
    def _write(self, *, raw: bool = True) -> Iterator[Any]:
        """A writing transaction that is on disk when the block exits: a verdict is durable before the
        attestation or co-signature it stands for leaves (F1). ``raw``: only :mod:`rawsql` statements run
        in it (else a SQLAlchemy connection)."""
        writing: AbstractContextManager[Any] = (
            self._fast.transaction() if raw and self._fast is not None else rawsql.writing(self._engine)
        )
        with writing as conn:
            yield conn
        if self._flush is not None:
            self._flush()

    def passing(self, job_id: str) -> str | None:
        """The passing attestation (JSON) recorded for the job, if its verification ever passed."""
        query = sa.select(verdicts.c.attestation).where(
            verdicts.c.job_id == job_id, verdicts.c.verdict == "pass"
        )
        with self._engine.connect() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else str(value)

    def require_no_pass(self, job_id: str, *, move: str) -> None:
        if self.passing(job_id) is not None:
            raise _owed(job_id, move)

    def dispose(self) -> None:
        if self._fast is not None and self._owns_fast:
            self._fast.close()
        self._engine.dispose()


class _Lost(Exception):
    """A compare-and-set lost: roll the transaction back."""


def _entries(value: object) -> list[list[str]]:
    try:
        entries = json.loads(value) if isinstance(value, str) and value else []
    except ValueError:
        return []
    return [list(map(str, e)) for e in entries if isinstance(e, list) and len(e) == 2]


def require_upheld(book: VerdictBook, chain: Any, *, job_id: str, escrow: str, evidence: str | None) -> None:
    """A slash without a fraud report rests on a dispute the arbiter upheld: ``evidence`` (base64) is the
    arbiter's refund transaction, whose message this verifier co-signed for this job's escrow and which
    the chain shows landed, signed by its fee payer. A co-signature alone proves nothing: a resolve whose
    record a compromised coordinator made up is co-signed too, and only the arbiter's key makes it land
    (issue 17; F1, I)."""
    import base64
    import hashlib

    from solders.transaction import Transaction

    def refused(why: str) -> CosignRefusedError:
        return CosignRefusedError(
            f"no dispute of this job was upheld by the arbiter: {why}", field="report", rule="F1"
        )

    try:
        tx = Transaction.from_bytes(base64.b64decode(evidence or "", validate=True))
        signature, payer = tx.signatures[0], tx.message.account_keys[0]
    except Exception:  # solders raises its own parse errors
        raise refused("the arbiter's refund transaction is missing or does not parse") from None
    message = bytes(tx.message)
    if hashlib.sha256(message).hexdigest() not in book.upheld_messages(job_id, escrow=escrow):
        raise refused("this verifier co-signed no such refund of the job's dispute escrow")
    if chain is None:
        raise refused("this verifier has no chain to ask whether the refund landed")
    status = chain.signature_status(str(signature))
    if not signature.verify(payer, message) or status is None or status.err:
        raise refused("the arbiter's refund did not land")


def verdict_of(report: str) -> str | None:
    """The verdict of an attestation's JSON (unchecked: what a stored record says), None if unreadable."""
    try:
        return ReportAttestation.parse(report).verdict
    except CyxwizError:
        return None


def refuse_if_passed(record: Any, move: str) -> None:
    """The ledger's own check: a release was already approved for this escrow (its report passed)."""
    if record.report and verdict_of(record.report) == "pass":
        raise _owed(record.job_id, move)


def _owed(job_id: str, move: str) -> ReleaseOwedError:
    return ReleaseOwedError(
        f"the verification of job {job_id!r} passed: its escrow is owed to the node, a {move} is refused",
        field="job_id",
        rule="F1",
        hint="release it with the passing report, or dispute it for the arbiter",
    )
