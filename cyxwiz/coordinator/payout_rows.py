"""The payout wallet statement each node signed, kept beside its row (issue 17; SPEC F1, A5).

The ``wallet`` column of ``cyx_nodes`` is what dispatch reads; this table holds the node's own signed
statement of it (:mod:`cyxwiz.ledger.payout`), which is what the verifier service believes. One row per
node, replaced only by a newer statement (``issued_at`` only grows), in the transaction that registers it.
Beside it, the renewal links (:class:`~cyxwiz.ledger.payout.SignedRenewalLink`): at each renewal the node's
old key signs "this new key is mine", which lets the verifier follow a proof's key to the key that signed
the newest statement — and only there.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cyxwiz.coordinator.records import now as _now
from cyxwiz.coordinator.tables import metadata, nodes
from cyxwiz.ledger.payout import SignedRenewalLink, SignedWalletStatement, check_newer

wallet_statements = sa.Table(
    "cyx_wallet_statements",
    metadata,
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("peer_id", sa.String(128), nullable=False),
    sa.Column("issued_at", sa.BigInteger, nullable=False),
    # {"statement": {...}, "signature": "..."} exactly as the node signed it.
    sa.Column("signed", sa.JSON, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

#: One row per renewal, kept for good: a link is what ties a proof signed by an earlier key to the wallet
#: the node stated with a later one (issue 17; F1, A7).
renewal_links = sa.Table(
    "cyx_renewal_links",
    metadata,
    sa.Column("old_peer_id", sa.String(128), primary_key=True),
    sa.Column("new_peer_id", sa.String(128), primary_key=True),
    sa.Column("node_id", sa.String(64), nullable=False, index=True),
    # {"link": {...}, "signature": "..."} exactly as the old key signed it.
    sa.Column("signed", sa.JSON, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


def record_link(conn: Connection, node_id: str, signed: SignedRenewalLink) -> None:
    """Keep the renewal link (in the renewal's own transaction: no renewal without its link)."""
    link = signed.link
    conn.execute(
        renewal_links.insert().values(
            old_peer_id=link.old_peer_id, new_peer_id=link.new_peer_id, node_id=node_id,
            signed=signed.to_dict(), recorded_at=_now(),
        )
    )  # fmt: skip


def record_statement(conn: Connection, node_id: str, signed: SignedWalletStatement) -> None:
    """Keep ``signed`` as the node's statement and its wallet as the node's payout wallet, unless the
    node already gave a newer one (:class:`~cyxwiz.ledger.payout.StaleWalletStatementError`, and the
    caller's transaction rolls back: nothing half-registered)."""
    row = conn.execute(
        sa.select(wallet_statements.c.signed).where(wallet_statements.c.node_id == node_id)
    ).first()
    current = dict(row[0]) if row is not None else None
    check_newer(current, signed)
    values = {
        "peer_id": signed.statement.peer_id,
        "issued_at": signed.statement.issued_at,
        "signed": signed.to_dict(),
        "recorded_at": _now(),
    }
    if row is None:
        conn.execute(wallet_statements.insert().values(node_id=node_id, **values))
    else:
        conn.execute(
            wallet_statements.update().where(wallet_statements.c.node_id == node_id).values(**values)
        )
    conn.execute(nodes.update().where(nodes.c.node_id == node_id).values(wallet=signed.statement.wallet))


class WalletStatementRows:
    """Mixin of :class:`~cyxwiz.coordinator.store.CoordinatorStore`: the statements it keeps."""

    def _tx(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def wallet_statement(self, node_id: str) -> dict[str, Any] | None:
        """The node's signed payout wallet statement as stored (None: it gave none)."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(wallet_statements.c.signed).where(wallet_statements.c.node_id == node_id)
            ).first()
        return dict(row[0]) if row is not None else None

    def renewal_links_from(self, old_peer_ids: Collection[str]) -> list[dict[str, Any]]:
        """The stored renewal links whose old key is one of ``old_peer_ids``, as signed."""
        query = sa.select(renewal_links.c.signed).where(renewal_links.c.old_peer_id.in_(list(old_peer_ids)))
        with self._tx() as conn:
            return [dict(row[0]) for row in conn.execute(query)]

    def renewal_links_to(self, new_peer_ids: Collection[str]) -> list[dict[str, Any]]:
        """The stored renewal links whose new key is one of ``new_peer_ids``, as signed."""
        query = sa.select(renewal_links.c.signed).where(renewal_links.c.new_peer_id.in_(list(new_peer_ids)))
        with self._tx() as conn:
            return [dict(row[0]) for row in conn.execute(query)]

    def set_wallet_statement(self, node_id: str, signed: Mapping[str, Any] | SignedWalletStatement) -> None:
        """Record a statement outside registration (a renewal carries one for the new key)."""
        parsed = (
            signed if isinstance(signed, SignedWalletStatement) else SignedWalletStatement.from_dict(signed)
        )
        with self._tx() as conn:
            record_statement(conn, node_id, parsed)
