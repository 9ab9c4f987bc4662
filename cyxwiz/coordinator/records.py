"""The coordinator's rows as frozen records (what the store hands out; never a live row)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
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
class NodeCertificate:
    """A certificate the coordinator accepted or issued for a node (its PEM, as presented or signed)."""

    node_id: str
    peer_id: str
    serial: str
    pem: str
    not_before: datetime
    not_after: datetime
    recorded_at: datetime


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
    #: The current assignment's id (None until dispatched): what job tokens and URLs were issued under.
    assignment: str | None = None

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


def node_record(row: Any) -> NodeRecord:
    m = row._mapping
    return NodeRecord(
        node_id=m["node_id"],
        peer_id=m["peer_id"],
        subject=m["subject"],
        cert_serial=m["cert_serial"],
        hardware=dict(m["hardware"]),
        status=m["status"],
        registered_at=aware(m["registered_at"]) or now(),
        last_heartbeat=aware(m["last_heartbeat"]),
        wallet=m["wallet"],
    )


def node_certificate(row: Any) -> NodeCertificate:
    m = row._mapping
    return NodeCertificate(
        node_id=m["node_id"],
        peer_id=m["peer_id"],
        serial=m["serial"],
        pem=m["pem"],
        not_before=aware(m["not_before"]) or now(),
        not_after=aware(m["not_after"]) or now(),
        recorded_at=aware(m["recorded_at"]) or now(),
    )


def job_record(row: Any) -> JobRecord:
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
        created_at=aware(m["created_at"]) or now(),
        updated_at=aware(m["updated_at"]) or now(),
        assignment=m.get("assignment"),
    )
