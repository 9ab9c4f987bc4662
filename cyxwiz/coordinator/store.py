"""Coordinator persistence: nodes, jobs and configuration here, sessions in
:mod:`cyxwiz.coordinator.sessions`, the schema in :mod:`cyxwiz.coordinator.tables`. Every state change is
one transaction; the store hands out frozen records (:mod:`cyxwiz.coordinator.records`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.engine import Connection, Engine

from cyxwiz.coordinator.claims import ClaimRows
from cyxwiz.coordinator.fencing import GrantRows, revoke_grants, settles
from cyxwiz.coordinator.payout_rows import WalletStatementRows, record_link, record_statement
from cyxwiz.coordinator.records import JobRecord, NodeCertificate, NodeRecord
from cyxwiz.coordinator.records import job_record as _job
from cyxwiz.coordinator.records import node_certificate as _node_cert
from cyxwiz.coordinator.records import node_record as _node
from cyxwiz.coordinator.records import now as _now
from cyxwiz.coordinator.sessions import SessionRows
from cyxwiz.coordinator.tables import (
    NODE_STATUSES,
    add_missing_columns,
    config,
    jobs,
    metadata,
    node_certs,
    node_peers,
    nodes,
)
from cyxwiz.errors import ConflictError, NotFoundError
from cyxwiz.ids import new_job_id, new_node_id
from cyxwiz.ledger.payout import SignedRenewalLink, SignedWalletStatement
from cyxwiz.pki.peerid import peer_id as peer_id_of

__all__ = ["AWAITING_FUNDING", "CoordinatorStore", "JobRecord", "NodeCertificate", "NodeRecord"]

#: A job a lifecycle run holds open until the owner's client sends the lock it signed (F1).
AWAITING_FUNDING = "awaiting-funding"


class CoordinatorStore(SessionRows, ClaimRows, GrantRows, WalletStatementRows):
    """All coordinator state. Thread-safe (one SQLAlchemy engine, short transactions)."""

    def __init__(self, *, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        add_missing_columns(engine)

    @classmethod
    def from_url(cls, url: str) -> CoordinatorStore:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        return cls(engine=engine)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- nodes --------------------------------------------------------------------------------------

    def register_node(
        self,
        *,
        peer_id: str,
        subject: str,
        cert_serial: str,
        hardware: Mapping[str, Any],
        wallet: str | None = None,
        certificate: x509.Certificate | None = None,
        wallet_statement: SignedWalletStatement | None = None,
    ) -> NodeRecord:
        """Create the node for this PeerID, or refresh its hardware (and payout wallet, when given); a
        banned/revoked node stays so. Only the certificate's PeerID selects the row (C2). ``certificate``
        (the one the caller presented) is recorded as the node's. ``wallet_statement`` (checked by the
        caller against that certificate) is kept with the row and sets its wallet, unless the node gave a
        newer one: then nothing is registered (F1)."""
        with self._tx() as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.peer_id == peer_id)).first()
            earlier = conn.execute(
                sa.select(node_peers.c.node_id).where(node_peers.c.peer_id == peer_id)
            ).first()
            if row is None and earlier is not None:
                # A certificate the node renewed from (still unexpired) is that node, never a second one;
                # its newer certificate stays current.
                node_id = earlier[0]
                refresh: dict[str, Any] = {"hardware": dict(hardware)}
                if wallet is not None:
                    refresh["wallet"] = wallet
                conn.execute(nodes.update().where(nodes.c.node_id == node_id).values(**refresh))
            elif row is None:
                node_id = new_node_id()
                conn.execute(
                    nodes.insert().values(
                        node_id=node_id,
                        peer_id=peer_id,
                        subject=subject,
                        cert_serial=cert_serial,
                        hardware=dict(hardware),
                        status="active",
                        registered_at=_now(),
                        last_heartbeat=_now(),
                        wallet=wallet,
                    )
                )
            else:
                node_id = row._mapping["node_id"]
                values: dict[str, Any] = {
                    "hardware": dict(hardware),
                    "subject": subject,
                    "cert_serial": cert_serial,
                }
                if wallet is not None:
                    values["wallet"] = wallet
                conn.execute(nodes.update().where(nodes.c.node_id == node_id).values(**values))
            if certificate is not None:
                _record_certificate(conn, node_id, peer_id, certificate)
            if wallet_statement is not None:
                record_statement(conn, node_id, wallet_statement)
            return _node(conn.execute(sa.select(nodes).where(nodes.c.node_id == node_id)).one())

    def node_by_peer(self, peer_id: str) -> NodeRecord | None:
        """The node whose current (or earlier, renewed-from) certificate has this PeerID."""
        with self._tx() as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.peer_id == peer_id)).first()
            if row is None:
                earlier = sa.select(node_peers.c.node_id).where(node_peers.c.peer_id == peer_id)
                row = conn.execute(sa.select(nodes).where(nodes.c.node_id.in_(earlier))).first()
            return _node(row) if row is not None else None

    def peer_ids_of(self, node_id: str) -> list[str]:
        """Every PeerID that is this node: its current certificate's and its earlier ones'."""
        with self._tx() as conn:
            current = conn.execute(sa.select(nodes.c.peer_id).where(nodes.c.node_id == node_id)).all()
            earlier = conn.execute(
                sa.select(node_peers.c.peer_id).where(node_peers.c.node_id == node_id)
            ).all()
        return [str(r[0]) for r in (*current, *earlier)]

    def node_certificates(self, node_id: str) -> list[NodeCertificate]:
        """Every certificate the coordinator accepted or issued for this node, oldest first."""
        query = (
            sa.select(node_certs).where(node_certs.c.node_id == node_id).order_by(node_certs.c.recorded_at)
        )
        with self._tx() as conn:
            return [_node_cert(r) for r in conn.execute(query)]

    def record_certificate(self, node_id: str, certificate: x509.Certificate) -> bool:
        """Keep a certificate the node authenticated with (idempotent): a node registered before the
        coordinator kept certificates gets its own on its next call, and verification can find it. Only
        a PeerID that is already this node's (current or renewed-from) is kept; False otherwise."""
        peer = peer_id_of(certificate)
        if peer not in self.peer_ids_of(node_id):
            return False
        with self._tx() as conn:
            _record_certificate(conn, node_id, peer, certificate)
        return True

    def renew_node(
        self,
        node_id: str,
        *,
        peer_id: str,
        cert_serial: str,
        certificate: x509.Certificate | None = None,
        renewal_link: SignedRenewalLink | None = None,
    ) -> NodeRecord:
        """The node's new certificate becomes current; the one it replaces stays the node's until it
        expires. A PeerID already known (key reuse, or another node's) is refused. ``renewal_link``: the
        old key's signed "the new key is mine", kept in the same transaction (issue 17)."""
        with self._tx() as conn:
            taken = conn.execute(sa.select(nodes.c.node_id).where(nodes.c.peer_id == peer_id)).first()
            taken = (
                taken
                or conn.execute(
                    sa.select(node_peers.c.node_id).where(node_peers.c.peer_id == peer_id)
                ).first()
            )
            if taken is not None:
                raise ConflictError("this key is already certified: a renewal needs a new key", field="csr")
            row = conn.execute(sa.select(nodes).where(nodes.c.node_id == node_id)).one()
            old = row._mapping
            conn.execute(
                node_peers.insert().values(
                    peer_id=old["peer_id"], node_id=node_id, cert_serial=old["cert_serial"]
                )
            )
            conn.execute(
                nodes.update()
                .where(nodes.c.node_id == node_id)
                .values(peer_id=peer_id, cert_serial=cert_serial)
            )
            if certificate is not None:
                _record_certificate(conn, node_id, peer_id, certificate)
            if renewal_link is not None:
                record_link(conn, node_id, renewal_link)
            return _node(conn.execute(sa.select(nodes).where(nodes.c.node_id == node_id)).one())

    def node(self, node_id: str) -> NodeRecord:
        with self._tx() as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.node_id == node_id)).first()
        if row is None:
            raise NotFoundError("no such node", field="node_id")
        return _node(row)

    def list_nodes(self) -> list[NodeRecord]:
        with self._tx() as conn:
            return [_node(r) for r in conn.execute(sa.select(nodes).order_by(nodes.c.registered_at))]

    def set_node_status(self, node_id: str, status: str) -> NodeRecord:
        if status not in NODE_STATUSES:
            raise ConflictError(f"unknown node status {status!r}", field="status")
        with self._tx() as conn:
            done = conn.execute(nodes.update().where(nodes.c.node_id == node_id).values(status=status))
            if done.rowcount == 0:
                raise NotFoundError("no such node", field="node_id")
        return self.node(node_id)

    def heartbeat(self, node_id: str) -> None:
        with self._tx() as conn:
            conn.execute(nodes.update().where(nodes.c.node_id == node_id).values(last_heartbeat=_now()))

    # --- jobs ---------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        user_id: str,
        spec: Mapping[str, Any],
        duration_s: int,
        job_id: str | None = None,
        status: str = "submitted",
    ) -> JobRecord:
        """A new job row; ``job_id`` is the id the user's client chose when it signed the job's escrow
        lock (a taken id is a conflict, never an overwrite)."""
        job_id = job_id or new_job_id()
        now = _now()
        with self._tx() as conn:
            if conn.execute(sa.select(jobs.c.job_id).where(jobs.c.job_id == job_id)).first() is not None:
                raise ConflictError("a job with this id exists", field="job_id", rule="F2")
            conn.execute(
                jobs.insert().values(
                    job_id=job_id,
                    user_id=user_id,
                    node_id=None,
                    status=status,
                    spec=dict(spec),
                    duration_s=duration_s,
                    progress={},
                    proof=None,
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.job(job_id)

    def job(self, job_id: str) -> JobRecord:
        with self._tx() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).first()
        if row is None:
            raise NotFoundError("no such job", field="job_id")
        return _job(row)

    def list_jobs(self, *, user_id: str | None = None, node_id: str | None = None) -> list[JobRecord]:
        query = sa.select(jobs).order_by(jobs.c.created_at)
        if user_id is not None:
            query = query.where(jobs.c.user_id == user_id)
        if node_id is not None:
            query = query.where(jobs.c.node_id == node_id)
        with self._tx() as conn:
            return [_job(r) for r in conn.execute(query)]

    def update_job(self, job_id: str, **values: Any) -> JobRecord:
        allowed = {"node_id", "status", "progress", "proof"}
        if not set(values) <= allowed:
            raise ConflictError("not an updatable job field", field=",".join(sorted(set(values) - allowed)))
        with self._tx() as conn:
            done = conn.execute(
                jobs.update().where(jobs.c.job_id == job_id).values(updated_at=_now(), **values)
            )
            if done.rowcount == 0:
                raise NotFoundError("no such job", field="job_id")
            if settles(values.get("status")):
                revoke_grants(conn, job_id)  # a settled job's token and URLs reach nothing (C3)
        return self.job(job_id)

    def attach_funding(self, job_id: str, funding: Mapping[str, Any]) -> JobRecord:
        """Put the lock the user's client signed into a job that waits for it (a lifecycle run started
        without one, e.g. from the Prefect UI); once only: the status moves on in the same statement (F1)."""
        with self._tx() as conn:
            row = conn.execute(sa.select(jobs.c.spec, jobs.c.status).where(jobs.c.job_id == job_id)).first()
            if row is None:
                raise NotFoundError("no such job", field="job_id")
            if row.status != AWAITING_FUNDING:
                raise ConflictError(
                    f"job is {row.status}, not waiting for funding", field="job_id", rule="F1"
                )
            done = conn.execute(
                jobs.update()
                .where(jobs.c.job_id == job_id, jobs.c.status == AWAITING_FUNDING)
                .values(
                    spec={**dict(row.spec), "funding": dict(funding)}, status="submitted", updated_at=_now()
                )
            )
            if done.rowcount != 1:
                raise ConflictError("job was funded meanwhile", field="job_id", rule="F1")
        return self.job(job_id)

    def assign_job(self, job_id: str, node_id: str) -> JobRecord:
        """Pin a submitted job to one node (tests, admin): the same atomic claim as the scheduler's."""
        node = self.node(node_id)
        if node.status != "active":
            raise ConflictError(f"node is {node.status}", field="node_id")
        return self.claim_job(job_id, candidates=[node_id]).job

    # --- configuration ------------------------------------------------------------------------------

    def get_config(self, key: str) -> Any:
        with self._tx() as conn:
            row = conn.execute(sa.select(config.c.value).where(config.c.key == key)).first()
        return None if row is None else row[0]

    def all_config(self) -> dict[str, Any]:
        with self._tx() as conn:
            return {r[0]: r[1] for r in conn.execute(sa.select(config.c.key, config.c.value))}

    def set_config(self, key: str, value: Any) -> Any:
        """Set ``key``; returns the old value (None when unset)."""
        with self._tx() as conn:
            row = conn.execute(sa.select(config.c.value).where(config.c.key == key)).first()
            if row is None:
                conn.execute(config.insert().values(key=key, value=value))
                return None
            conn.execute(config.update().where(config.c.key == key).values(value=value))
            return row[0]


def _record_certificate(conn: Connection, node_id: str, peer_id: str, certificate: x509.Certificate) -> None:
    """Keep the certificate under the node (once per PeerID; a PeerID is one key, one node)."""
    if conn.execute(sa.select(node_certs.c.node_id).where(node_certs.c.peer_id == peer_id)).first():
        return
    conn.execute(
        node_certs.insert().values(
            peer_id=peer_id,
            node_id=node_id,
            serial=format(certificate.serial_number, "x"),
            pem=certificate.public_bytes(Encoding.PEM).decode(),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            recorded_at=_now(),
        )
    )
