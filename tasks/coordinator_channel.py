"""The lifecycle's side of the coordinator: its database, shared inside the trusted zone.

The lifecycle flow and the coordinator both run in the trusted zone and share the coordinator store
(SQLite embedded, PostgreSQL in production); nodes only ever reach it through the mTLS API.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from cyxwiz.errors import ConfigError, ConflictError, NotFoundError
from tasks.config import ControlPlaneConfig

#: A node whose last heartbeat is older than this is not dispatched to.
HEARTBEAT_FRESH = dt.timedelta(seconds=60)


def node_name(subject: str) -> str:
    """The node's name (its certificate CN): a label for people and pinning, never an identity (a second
    certificate may carry the same CN). Queue, wallet and assignment follow the node id (PeerID-keyed)."""
    for part in subject.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().upper() == "CN":
            return value.strip()
    return subject


class SchedulerChannel:
    def __init__(
        self,
        *,
        store: Any,
        node_wallets: dict[str, str] | None = None,
        crl: Path | None = None,
        staked: Callable[[Collection[str]], set[str]] | None = None,
    ) -> None:
        self.store = store
        #: Which of these PeerIDs' nodes hold the minimum stake (F1); None: no stake rule here. Asked
        #: before the claim, so a node without stake is skipped for another, never half-assigned.
        self.staked = staked
        #: Operator overrides (by PeerID, node id, or a name only one node holds); the wallet a node
        #: registered under its own PeerID comes first.
        self.node_wallets = dict(node_wallets or {})
        self.crl = crl

    def _revoked_serials(self) -> set[int]:
        """Serials on the current CRL, read at every dispatch: a revocation stops new work at once (A6)."""
        if self.crl is None or not self.crl.exists():
            return set()
        from cyxwiz.pki.certs import load_crls

        return {entry.serial_number for crl in load_crls(self.crl) for entry in crl}

    @classmethod
    def from_config(cls, config: ControlPlaneConfig) -> SchedulerChannel:
        from cyxwiz.coordinator.store import CoordinatorStore

        if not config.coordinator_db:
            raise ConfigError("the control plane needs coordinator_db", field="coordinator_db")
        return cls(
            store=CoordinatorStore.from_url(config.coordinator_db),
            node_wallets=dict(config.node_wallets),
            crl=config.pki_root / "ca" / "ca-crl.pem",
            staked=_staked_peers,
        )

    def create_job(
        self,
        *,
        user: str,
        spec: dict[str, Any],
        duration_s: int,
        job_id: str | None = None,
        status: str = "submitted",
    ) -> str:
        record = self.store.create_job(
            user_id=user, spec=spec, duration_s=duration_s, job_id=job_id, status=status
        )
        return str(record.job_id)

    def eligible(self, *, node: str | None = None, exclude: Collection[str] = ()) -> list[tuple[Any, str]]:
        """(record, name) of every node a job may go to now: active, paid (a wallet), unrevoked, a fresh
        heartbeat; ``node`` pins a name; ``exclude`` names node ids or PeerIDs never to pick (the first
        node of a redundant job: the second must be another node, A5)."""
        now = dt.datetime.now(dt.UTC)
        revoked = self._revoked_serials()
        found = []
        for record in self.store.list_nodes():
            name = node_name(record.subject)
            if record.status != "active" or self._wallet(record, name) is None:
                continue
            if int(record.cert_serial, 16) in revoked:
                continue
            if node is not None and name != node:
                continue
            if record.node_id in exclude or record.peer_id in exclude:
                continue
            if record.last_heartbeat is None or now - record.last_heartbeat > HEARTBEAT_FRESH:
                continue
            found.append((record, name))
        if self.staked is not None and found:
            holding = self.staked([record.peer_id for record, _ in found])
            found = [(record, name) for record, name in found if record.peer_id in holding]
        return found

    def assign(
        self, job_id: str, *, node: str | None = None, exclude: Collection[str] = ()
    ) -> dict[str, Any]:
        """Pick and assign in one transaction of the coordinator's store (issue 21; C3, F2): two
        lifecycles in two processes never both take the same free node, and a job already assigned by
        another process is a :class:`ConflictError`, never a second node. The spreading rule (fewest open
        jobs, then given a job least recently, then freshest heartbeat; never past a node's declared
        ``max_jobs``) is :meth:`CoordinatorStore.claim_job`'s, over the nodes :meth:`eligible` finds."""
        found = self.eligible(node=node, exclude=exclude)
        if not found:
            wanted = f"node {node!r}" if node else "any node"
            other = " outside the nodes this job must avoid" if exclude else ""
            raise ConflictError(
                f"no healthy, unrevoked, registered {wanted}{other} to dispatch to", field="node"
            )
        by_id = {record.node_id: (record, name) for record, name in found}
        beats = {r.node_id: r.last_heartbeat for r, _ in found if r.last_heartbeat is not None}
        claim = self.store.claim_job(job_id, candidates=list(by_id), exclude=exclude, heartbeats=beats)
        record, name = by_id[claim.node_id]
        wallet = self._wallet(record, name)
        assert wallet is not None  # eligible() kept only nodes with one
        # The work queue is the node id: two certificates with one CN never share a queue (A5, C3).
        return {
            "node_id": record.node_id,
            "name": name,
            "queue": record.node_id,
            "peer_id": record.peer_id,
            "wallet": wallet,
            "assignment": claim.assignment,
        }

    def _wallet(self, record: Any, name: str) -> str | None:
        """The node's wallet: the one its own key signed (F1; a rewritten ``wallet`` column alone no longer
        sends its jobs to a wallet the verifier refuses, which refunded them), else the row's; else
        configured by PeerID or node id, or by name only while that name is one node's alone (a second
        certificate with the same CN must not draw the first one's pay). None: no paid work for it."""
        stated = self._stated_wallet(record)
        if stated is not None:
            return stated
        if record.wallet:
            return str(record.wallet)
        return self.configured_wallet(record, name)

    def _stated_wallet(self, record: Any) -> str | None:
        """The wallet of the node's stored statement when a certificate held for the node signed it. The
        verifier service decides what is paid (``tasks.payout_wallet``); this only keeps dispatch on it."""
        from cryptography import x509

        from cyxwiz.errors import CyxwizError
        from cyxwiz.ledger.payout import SignedWalletStatement

        stored = self.store.wallet_statement(record.node_id)
        if stored is None:
            return None
        try:
            signed = SignedWalletStatement.from_dict(stored)
            peer = signed.statement.peer_id
            held = [c for c in self.node_certificates(record.node_id) if c.peer_id == peer]
            if not held:
                return None
            return signed.verify(x509.load_pem_x509_certificate(held[0].pem.encode())).wallet
        except CyxwizError:
            return None

    def configured_wallet(self, record: Any, name: str) -> str | None:
        """The operator's configured wallet for the node (this process's config file, never the
        coordinator's database): the source the verifier service accepts beside the node's own signed
        statement (issue 17, F1)."""
        for key in (record.peer_id, record.node_id):
            if key in self.node_wallets:
                return self.node_wallets[key]
        same_name = [
            n for n in self.store.list_nodes() if node_name(n.subject) == name and n.status == "active"
        ]
        if len(same_name) != 1:
            return None
        return self.node_wallets.get(name)

    def job(self, job_id: str) -> dict[str, Any]:
        record = self.store.job(job_id)
        return {
            "job_id": record.job_id,
            "user_id": record.user_id,
            "status": record.status,
            "node_id": record.node_id,
            "proof": record.proof,
            "progress": record.progress,
            "updated_at": record.updated_at.isoformat(),
            "funding": record.spec.get("funding"),
        }

    def node_certificates(self, node_id: str) -> list[Any]:
        return list(self.store.node_certificates(node_id))

    def revoke_job_token(self, job_id: str) -> None:
        # A job that is no longer assigned/running gets no job token and its token's calls are refused.
        try:
            self.set_status(job_id, "cancelled")
        except NotFoundError:
            return

    def set_status(self, job_id: str, status: str, *, detail: str = "") -> None:
        del detail
        self.store.update_job(job_id, status=status)


def _staked_peers(peer_ids: Collection[str]) -> set[str]:
    from tasks import services

    return services.staked_peers(peer_ids)
