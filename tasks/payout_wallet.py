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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cyxwiz.errors import CyxwizError

Source = Literal["statement", "config", "none"]


@dataclass(frozen=True, kw_only=True)
class PayoutWallet:
    """The wallet (None: none may be paid), where it comes from, and why the statement did not count."""

    wallet: str | None
    source: Source
    reason: str


def payout_wallet(
    channel: Any, record: Any, name: str, *, trust: Callable[[], Any], now: dt.datetime | None = None
) -> PayoutWallet:
    """The node's payout wallet from its signed statement, else from this process's configuration.
    ``trust`` gives the CA bundle and CRLs (a :class:`~cyxwiz.verification.verifier.TrustStore`), read
    only when there is a statement to check."""
    statement_reason = _statement(channel, record, trust=trust, now=now or dt.datetime.now(dt.UTC))
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
        reason=f"signed by {peer} at {statement.issued_at}",
    )  # fmt: skip
