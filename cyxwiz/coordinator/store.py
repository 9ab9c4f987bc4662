"""Coordinator persistence (SQLAlchemy Core): SQLite embedded, PostgreSQL in production.

Tables: nodes (identity = certificate PeerID), sessions (revocable; refresh-token families), refresh
tokens (one-shot, rotation with reuse detection, SPEC B5), jobs (owner, assigned node, status, progress,
proof) and configuration (audited changes). Every state change is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cyxwiz.errors import ConflictError, NotFoundError
from cyxwiz.ids import new_job_id, new_node_id

metadata = sa.MetaData()

nodes = sa.Table(
    "cyx_nodes",
    metadata,
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("peer_id", sa.String(128), nullable=False, unique=True),
    sa.Column("subject", sa.String(1024), nullable=False),
    sa.Column("cert_serial", sa.String(64), nullable=False),
    sa.Column("hardware", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | draining | banned | revoked
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_heartbeat", sa.DateTime(timezone=True)),
    # The payout wallet (base58 public key) the node registered under its certificate's PeerID (F1).
    sa.Column("wallet", sa.String(64)),
)
sessions = sa.Table(
    "cyx_sessions",
    metadata,
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("principal_kind", sa.String(8), nullable=False),  # node | user
    sa.Column("principal_id", sa.String(128), nullable=False, index=True),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
#: Earlier certificates of a node (renewed, not revoked): they keep working until they expire, so jobs
#: in flight when the node switched to its new certificate are not dropped (A7 automatic renewal).
node_peers = sa.Table(
    "cyx_node_peers",
    metadata,
    sa.Column("peer_id", sa.String(128), primary_key=True),
    sa.Column("node_id", sa.String(64), nullable=False, index=True),
    sa.Column("cert_serial", sa.String(64), nullable=False),
)
#: The client certificate a session was opened with, so revoking the certificate kills its family.
session_certs = sa.Table(
    "cyx_session_certs",
    metadata,
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("issuer", sa.String(1024), nullable=False),
    sa.Column("serial", sa.String(64), nullable=False),
)
refresh_tokens = sa.Table(
    "cyx_refresh_tokens",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("session_id", sa.String(128), nullable=False, index=True),
    sa.Column("used", sa.Boolean, nullable=False, default=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)
jobs = sa.Table(
    "cyx_jobs",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("node_id", sa.String(64), index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("duration_s", sa.Integer, nullable=False),
    sa.Column("progress", sa.JSON, nullable=False),
    sa.Column("proof", sa.JSON),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
config = sa.Table(
    "cyx_config",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
)

NODE_STATUSES = ("active", "draining", "banned", "revoked")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything stored is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    peer_id: str
    subject: str
    cert_serial: str
    hardware: dict[str, Any]
    status: str
    registered_at: datetime
    last_heartbeat: datetime | None
    wallet: str | None = None


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    user_id: str
    node_id: str | None
    status: str
    spec: dict[str, Any]
    duration_s: int
    progress: dict[str, Any]
    proof: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "user_id": self.user_id,
            "node_id": self.node_id,
            "status": self.status,
            "spec": self.spec,
            "progress": self.progress,
            "has_proof": self.proof is not None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _node(row: Any) -> NodeRecord:
    m = row._mapping
    return NodeRecord(
        node_id=m["node_id"],
        peer_id=m["peer_id"],
        subject=m["subject"],
        cert_serial=m["cert_serial"],
        hardware=dict(m["hardware"]),
        status=m["status"],
        registered_at=_aware(m["registered_at"]) or _now(),
        last_heartbeat=_aware(m["last_heartbeat"]),
        wallet=m["wallet"],
    )


def _job(row: Any) -> JobRecord:
    m = row._mapping
    return JobRecord(
        job_id=m["job_id"],
        user_id=m["user_id"],
        node_id=m["node_id"],
        status=m["status"],
        spec=dict(m["spec"]),
        duration_s=int(m["duration_s"]),
        progress=dict(m["progress"]),
        proof=dict(m["proof"]) if m["proof"] is not None else None,
        created_at=_aware(m["created_at"]) or _now(),
        updated_at=_aware(m["updated_at"]) or _now(),
    )


def _add_missing_columns(engine: Engine) -> None:
    """Columns added after a table first shipped (``create_all`` only makes missing tables)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns("cyx_nodes")}
    if "wallet" not in present:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE cyx_nodes ADD COLUMN wallet VARCHAR(64)"))


class CoordinatorStore:
    """All coordinator state. Thread-safe (one SQLAlchemy engine, short transactions)."""

    def __init__(self, *, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        _add_missing_columns(engine)

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
    ) -> NodeRecord:
        """Create the node for this PeerID, or refresh its hardware (and payout wallet, when given); a
        banned/revoked node stays so. Only the certificate's PeerID selects the row (C2)."""
        with self._tx() as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.peer_id == peer_id)).first()
            if row is None:
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
            return _node(conn.execute(sa.select(nodes).where(nodes.c.node_id == node_id)).one())

    def node_by_peer(self, peer_id: str) -> NodeRecord | None:
        """The node whose current (or earlier, renewed-from) certificate has this PeerID."""
        with self._tx() as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.peer_id == peer_id)).first()
            if row is None:
                earlier = sa.select(node_peers.c.node_id).where(node_peers.c.peer_id == peer_id)
                row = conn.execute(sa.select(nodes).where(nodes.c.node_id.in_(earlier))).first()
            return _node(row) if row is not None else None

    def earlier_serials(self, node_id: str) -> list[str]:
        """Serials (hex) of the node's earlier certificates, which stay its own until they expire."""
        with self._tx() as conn:
            rows = conn.execute(sa.select(node_peers.c.cert_serial).where(node_peers.c.node_id == node_id))
            return [str(r[0]) for r in rows]

    def renew_node(self, node_id: str, *, peer_id: str, cert_serial: str) -> NodeRecord:
        """The node's new certificate becomes current; the one it replaces stays the node's until it
        expires. A PeerID already known (key reuse, or another node's) is refused."""
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

    # --- sessions and refresh families ------------------------------------------------------------

    def create_session(self, *, session_id: str, principal_kind: str, principal_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                sessions.insert().values(
                    session_id=session_id,
                    principal_kind=principal_kind,
                    principal_id=principal_id,
                    revoked=False,
                    created_at=_now(),
                )
            )

    def is_session_revoked(self, session_id: str) -> bool:
        """Unknown sessions count as revoked: only sessions this coordinator opened are valid."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(sessions.c.revoked).where(sessions.c.session_id == session_id)
            ).first()
        return row is None or bool(row[0])

    def revoke_session(self, session_id: str) -> None:
        with self._tx() as conn:
            conn.execute(sessions.update().where(sessions.c.session_id == session_id).values(revoked=True))

    def revoke_sessions_of(self, principal_id: str) -> int:
        with self._tx() as conn:
            done = conn.execute(
                sessions.update()
                .where(sessions.c.principal_id == principal_id, sessions.c.revoked.is_(False))
                .values(revoked=True)
            )
            return int(done.rowcount)

    def bind_session_cert(self, *, session_id: str, issuer: str, serial: int) -> None:
        with self._tx() as conn:
            conn.execute(
                session_certs.insert().values(
                    session_id=session_id, issuer=issuer, serial=format(serial, "x")
                )
            )

    def revoke_sessions_of_certs(self, revoked: frozenset[tuple[str, int]]) -> list[str]:
        """Revoke every live session opened with a certificate in ``revoked`` ((issuer, serial) pairs)."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(session_certs.c.session_id, session_certs.c.issuer, session_certs.c.serial)
                .join(sessions, sessions.c.session_id == session_certs.c.session_id)
                .where(sessions.c.revoked.is_(False))
            ).all()
            doomed = [r.session_id for r in rows if (r.issuer, int(r.serial, 16)) in revoked]
            if doomed:
                conn.execute(sessions.update().where(sessions.c.session_id.in_(doomed)).values(revoked=True))
        return doomed

    def add_refresh(self, *, jti: str, session_id: str, expires_at: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                refresh_tokens.insert().values(
                    jti=jti, session_id=session_id, used=False, expires_at=expires_at
                )
            )

    def consume_refresh(self, *, jti: str, session_id: str) -> bool:
        """Mark a refresh token used. False = it was used before (or never ours): a reuse (B5)."""
        with self._tx() as conn:
            done = conn.execute(
                refresh_tokens.update()
                .where(
                    refresh_tokens.c.jti == jti,
                    refresh_tokens.c.session_id == session_id,
                    refresh_tokens.c.used.is_(False),
                )
                .values(used=True)
            )
            return done.rowcount == 1

    # --- jobs ---------------------------------------------------------------------------------------

    def create_job(
        self, *, user_id: str, spec: Mapping[str, Any], duration_s: int, job_id: str | None = None
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
                    status="submitted",
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
        return self.job(job_id)

    def assign_job(self, job_id: str, node_id: str) -> JobRecord:
        node = self.node(node_id)
        if node.status != "active":
            raise ConflictError(f"node is {node.status}", field="node_id")
        return self.update_job(job_id, node_id=node_id, status="assigned")

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
