"""The payout wallet the verifier service believes (issue 17; SPEC F1, A5, A7, threat I "payment fraud").

Not the coordinator's ``wallet`` column, nor its mapping of nodes to certificates: a compromised coordinator
could rewrite the one, or list another node's genuine certificate (and that key's own statement) under the
honest node in the other. Everything starts from the key that signed the job's completion proof (an
Ed25519 PeerID is its public key, so the proof itself says whose key it is). Only two sources count:

* a statement (:mod:`cyxwiz.ledger.payout`) signed by that key, or by a key it renewed into through renewal
  links each signed by the older key, stored by the coordinator and verified here again against a
  certificate whose chain, validity and revocation are checked now against the CA;
* the operator's configuration of this process (``node_wallets``: by one of those PeerIDs, or by the name
  the proof key's own certificate carries while only one node holds it), a file the coordinator cannot write.

A valid statement wins over the configuration (the node chose its wallet); a missing or broken one leaves
the configuration, and without either (or without a verified proof) the node has no wallet a release may pay.

The verifier service also remembers, in its own file (:class:`StatementMarks`), the newest statement it
accepted per node: a coordinator that puts back a node's older, validly signed statement (the wallet the
node moved away from) is caught as the replay it is once the verifier has seen the newer one; and the key
of the last proof it judged per job, which is what an arbiter's "release to the node" pays.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cyxwiz.errors import CyxwizError

Source = Literal["statement", "config", "none"]


@dataclass(frozen=True, kw_only=True)
class PayoutWallet:
    """The wallet (None: none may be paid), where it comes from, and why the statement did not count."""

    wallet: str | None
    source: Source
    reason: str
    #: The statement's ``issued_at`` (Unix ms) and signing PeerID when the wallet comes from one.
    issued_at: int = 0
    peer_id: str = ""


@dataclass
class StatementMarks:
    """The newest statement (``issued_at``, Unix ms) this verifier accepted per node and per signing
    PeerID: one SQLite file of its own (0600), never the coordinator's database."""

    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path: Path) -> StatementMarks:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600, exist_ok=True)
        marks = cls(path=path)
        with marks._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS marks (node_id TEXT PRIMARY KEY, issued_at INTEGER NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS signers (job_id TEXT PRIMARY KEY, peer_id TEXT NOT NULL)"
            )
        return marks

    def note_signer(self, job_id: str, peer_id: str) -> None:
        """The key whose signed completion proof this verifier last judged for the job: the only key an
        arbiter's "release to the node" may pay the wallet of (:func:`wallet_of_job`)."""
        with self._lock, self._connect() as conn:
            conn.execute(
                "INSERT INTO signers (job_id, peer_id) VALUES (?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET peer_id = excluded.peer_id",
                (job_id, peer_id),
            )

    def signer(self, job_id: str) -> str | None:
        with self._lock, self._connect() as conn:
            row = conn.execute("SELECT peer_id FROM signers WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")

    def observe(self, keys: tuple[str, ...], issued_at: int) -> int | None:
        """Record ``issued_at`` as the newest under each key unless a newer one was seen under any of them;
        returns that newer one (the statement is a replay) or None. Keys: the node id (a replay of the
        node's statement under an earlier key) and the signing PeerID (one that holds even when the
        coordinator re-keys the node's rows under another node id)."""
        with self._lock, self._connect() as conn:
            seen = [
                int(row[0])
                for key in keys
                for row in conn.execute("SELECT issued_at FROM marks WHERE node_id = ?", (key,))
            ]
            if seen and max(seen) > issued_at:
                return max(seen)
            conn.executemany(
                "INSERT INTO marks (node_id, issued_at) VALUES (?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET issued_at = MAX(issued_at, excluded.issued_at)",
                [(key, issued_at) for key in keys],
            )
        return None


def payout_wallet(
    channel: Any,
    record: Any,
    *,
    signer: str | None,
    trust: Callable[[], Any],
    now: dt.datetime | None = None,
    marks: StatementMarks | None = None,
) -> PayoutWallet:
    """The node's payout wallet from its signed statement, else from this process's configuration.

    ``signer``: the PeerID whose key signed the job's completion proof (checked by the caller). Only a
    statement signed by that key, or by a key it renewed into (renewal links, each signed by the older
    key), counts; None (no proof): none does. The coordinator's mapping of nodes to certificates is not
    trusted here: it could list another node's genuine certificate, and that node's own statement, under
    the honest node's row. ``trust`` gives the CA bundle and CRLs, read only when a statement is checked.
    """
    from cyxwiz.ledger.payout import linked_keys

    keys = frozenset() if signer is None else linked_keys(signer, channel.store.renewal_links_from)
    statement_reason: PayoutWallet | str = "no verified completion proof names the key the work was done with"
    if keys:
        statement_reason = _statement(channel, record, keys, trust=trust, now=now or dt.datetime.now(dt.UTC))
    if isinstance(statement_reason, PayoutWallet) and marks is not None:
        issued = statement_reason.issued_at
        newer = marks.observe((f"node:{record.node_id}", f"peer:{statement_reason.peer_id}"), issued)
        if newer is not None:
            statement_reason = (
                f"the stored wallet statement (issued at {issued}) is older than one this verifier "
                f"already accepted ({newer}): a replay of a wallet the node moved away from"
            )
    if isinstance(statement_reason, PayoutWallet):
        return statement_reason
    configured = _configured(channel, keys, signer, trust=trust, now=now or dt.datetime.now(dt.UTC))
    if configured is not None:
        return PayoutWallet(wallet=configured, source="config", reason=f"configured; {statement_reason}")
    return PayoutWallet(wallet=None, source="none", reason=statement_reason)


def _configured(
    channel: Any, keys: frozenset[str], signer: str | None, *, trust: Callable[[], Any], now: dt.datetime
) -> str | None:
    """The operator's wallet for the proof's key: by one of its PeerIDs, else by the name (CN) its own
    certificate carries — one whose key *is* the signer's and that chains to the CA now — while that name
    is one node's alone; never by a node id or a name the coordinator's rows alone tie to the proof."""
    from cyxwiz.verification.verifier import check_certificate
    from tasks.coordinator_channel import node_name

    for key in sorted(keys):
        if key in channel.node_wallets:
            return str(channel.node_wallets[key])
    certificate = _certificate_of(channel, signer) if signer else None
    if certificate is None or not check_certificate(certificate, trust(), now).passed:
        return None
    name = node_name(certificate.subject.rfc4514_string())
    holders = [n for n in channel.store.list_nodes() if node_name(n.subject) == name and n.status == "active"]
    return channel.node_wallets.get(name) if len(holders) == 1 else None


def _certificate_of(channel: Any, peer: str) -> Any:
    """A certificate the coordinator holds whose key *is* ``peer`` (checked: the row's PeerID column is
    the coordinator's word); None when it holds none."""
    from cryptography import x509

    from cyxwiz.pki.peerid import peer_id

    owner = channel.store.node_by_peer(peer)
    for held in channel.node_certificates(owner.node_id) if owner is not None else ():
        certificate = x509.load_pem_x509_certificate(held.pem.encode())
        if peer_id(certificate) == peer:
            return certificate
    return None


def _statement(
    channel: Any, record: Any, keys: frozenset[str], *, trust: Callable[[], Any], now: dt.datetime
) -> PayoutWallet | str:
    """The wallet of the node's valid statement signed by one of ``keys``, or why there is none."""
    from cryptography import x509

    from cyxwiz.ledger.payout import SignedWalletStatement
    from cyxwiz.verification.verifier import check_certificate

    stored = channel.store.wallet_statement(record.node_id)
    if stored is None:
        return "the node signed no wallet statement"
    try:
        signed = SignedWalletStatement.from_dict(stored)
    except CyxwizError as exc:
        return f"the stored wallet statement is malformed: {exc.message}"
    peer = signed.statement.peer_id
    if peer not in keys:
        return (
            f"the wallet statement is signed by {peer}, not by the key that signed the completion proof "
            f"nor one that key renewed into ({', '.join(sorted(keys))})"
        )
    held = {c.peer_id: c for c in channel.node_certificates(record.node_id)}.get(peer)
    certificate = None if held is None else x509.load_pem_x509_certificate(held.pem.encode())
    check = None if certificate is None else check_certificate(certificate, trust(), now)
    if certificate is None or check is None or not check.passed:
        why = "no certificate the coordinator holds for this node" if check is None else check.reason
        return f"the wallet statement's certificate ({peer}) is refused: {why}"
    try:
        statement = signed.verify(certificate)
    except CyxwizError as exc:
        return f"the wallet statement does not verify: {exc.message}"
    return PayoutWallet(
        wallet=statement.wallet, source="statement",
        reason=f"signed by {peer} at {statement.issued_at}", issued_at=statement.issued_at, peer_id=peer,
    )  # fmt: skip


def wallet_of_job(job_id: str, *, marks: StatementMarks | None = None) -> str | None:
    """Where an arbiter's "release to the node" of ``job_id`` may pay: the wallet of the key whose proof
    this verifier judged for the job (``marks``), never of a PeerID the escrow record names; None when it
    judged no signed proof of that job (only a refund is co-signed then) or the key has no wallet."""
    from tasks import services
    from tasks.coordinator_channel import SchedulerChannel

    signer = marks.signer(job_id) if marks is not None else None
    if signer is None:
        return None
    channel = SchedulerChannel.from_config(services.config())
    record = channel.store.node_by_peer(signer)
    if record is None:
        return None
    trust = lambda: services._node_trust(services.config())  # noqa: E731 - read only when needed
    return payout_wallet(channel, record, signer=signer, trust=trust, marks=marks).wallet
