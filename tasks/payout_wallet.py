"""The payout wallet the verifier service believes (issue 17; SPEC F1, A5, threat I "payment fraud").

Not the coordinator's ``wallet`` column: a compromised coordinator could rewrite it and have the verifier
attest the honest node's pay to another wallet. Only two sources count:

* the node's own statement (:mod:`cyxwiz.ledger.payout`), stored by the coordinator, verified here again
  against a certificate the coordinator holds for that node whose chain, validity and revocation are checked
  now against the CA (the same certificate check as a completion proof's);
* the operator's configuration of this process (``node_wallets``: by PeerID, node id or a name only one
  node holds), a file the coordinator cannot write.

A valid statement wins over the configuration (the node chose its wallet); a missing or broken one leaves
the configuration, and without either the node has no wallet a release may pay.

The verifier service also remembers, in its own file (:class:`StatementMarks`), the newest statement it
accepted per node: a coordinator that puts back a node's older, validly signed statement (the wallet the
node moved away from) is caught as the replay it is once the verifier has seen the newer one.
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
        return marks

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
    name: str,
    *,
    trust: Callable[[], Any],
    now: dt.datetime | None = None,
    marks: StatementMarks | None = None,
) -> PayoutWallet:
    """The node's payout wallet from its signed statement, else from this process's configuration.
    ``trust`` gives the CA bundle and CRLs (a :class:`~cyxwiz.verification.verifier.TrustStore`), read
    only when there is a statement to check."""
    statement_reason = _statement(channel, record, trust=trust, now=now or dt.datetime.now(dt.UTC))
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
    configured = channel.configured_wallet(record, name)
    if configured is not None:
        return PayoutWallet(wallet=configured, source="config", reason=f"configured; {statement_reason}")
    return PayoutWallet(wallet=None, source="none", reason=statement_reason)


def _statement(
    channel: Any, record: Any, *, trust: Callable[[], Any], now: dt.datetime
) -> PayoutWallet | str:
    """The wallet of the node's valid statement, or why there is none."""
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
    held = {c.peer_id: c for c in channel.node_certificates(record.node_id)}
    if peer not in held:
        return f"the wallet statement names {peer}, no certificate the coordinator holds for this node"
    certificate = x509.load_pem_x509_certificate(held[peer].pem.encode())
    check = check_certificate(certificate, trust(), now)
    if not check.passed:
        return f"the wallet statement's certificate is refused: {check.reason}"
    try:
        statement = signed.verify(certificate)
    except CyxwizError as exc:
        return f"the wallet statement does not verify: {exc.message}"
    return PayoutWallet(
        wallet=statement.wallet, source="statement",
        reason=f"signed by {peer} at {statement.issued_at}", issued_at=statement.issued_at, peer_id=peer,
    )  # fmt: skip


def wallet_of_peer(peer_id: str, *, marks: StatementMarks | None = None) -> str | None:
    """The payout wallet of the node that holds (or held) ``peer_id``, by the control plane's records and
    config; None when there is no such node or no wallet it may be paid into."""
    from tasks import services
    from tasks.coordinator_channel import SchedulerChannel, node_name

    channel = SchedulerChannel.from_config(services.config())
    record = channel.store.node_by_peer(peer_id)
    if record is None:
        return None
    trust = lambda: services._node_trust(services.config())  # noqa: E731 - read only when needed
    return payout_wallet(channel, record, node_name(record.subject), trust=trust, marks=marks).wallet
