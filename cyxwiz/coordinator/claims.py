"""Pick a node and assign a job to it in one transaction (issue 21; SPEC C3, F2).

Two lifecycles in two processes (two control workers) used to read the nodes' loads, choose, and then
assign in separate statements: both saw the same idle node and both gave it a job. Here the choice and
the assignment are one transaction that first takes a lock every other claim over the same nodes needs:

* PostgreSQL: the job row (an ``UPDATE``) then the candidate node rows, ``SELECT … FOR UPDATE`` in
  node-id order (no deadlock between two claims over overlapping sets). Under READ COMMITTED each later
  statement sees every claim that held those locks before, so the loads counted are the committed ones.
* SQLite: the first statement is that same ``UPDATE``, which takes the database's write lock (pysqlite
  begins the transaction just before it): claims run one after another, each reading the last one's result.

The rule (README "Node agent"): among the healthy candidates the caller found (active, paid, unrevoked,
fresh heartbeat, staked, outside ``exclude``), the node holding the fewest open jobs, then the one given a
job least recently, then the freshest heartbeat; never a node that already holds as many open jobs as it
declared it runs (``hardware.max_jobs``, when it declared one). The job moves only from ``submitted``
(first dispatch) or away from a node the caller names as lost (re-dispatch); anything else is a
:class:`ConflictError` and changes nothing. Each claim gets a fresh assignment id: job tokens and object
URLs issued under an earlier one are dead (:mod:`cyxwiz.coordinator.fencing`).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cyxwiz.authz.policies import OPEN_JOB_STATES
from cyxwiz.coordinator.fencing import revoke_grants
from cyxwiz.coordinator.records import JobRecord
from cyxwiz.coordinator.records import aware as _aware
from cyxwiz.coordinator.records import job_record as _job
from cyxwiz.coordinator.records import now as _now
from cyxwiz.coordinator.tables import jobs, nodes
from cyxwiz.errors import ConflictError, NotFoundError, ValidationError

#: The only state a first dispatch takes a job from.
CLAIMABLE = "submitted"


@dataclass(frozen=True, kw_only=True)
class Claim:
    """What a claim decided: the job as assigned, its node and the assignment id."""

    job: JobRecord
    node_id: str
    assignment: str


def new_assignment_id() -> str:
    return "asg-" + secrets.token_hex(12)


def max_jobs(hardware: object) -> int | None:
    """The most open jobs the node said it runs (``python -m agents --max-jobs``); None: no cap."""
    value = hardware.get("max_jobs") if isinstance(hardware, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


class ClaimRows:
    """Mixed into :class:`~cyxwiz.coordinator.store.CoordinatorStore`, which provides transactions."""

    def _tx(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def claim_job(
        self,
        job_id: str,
        *,
        candidates: Sequence[str],
        exclude: Collection[str] = (),
        heartbeats: dict[str, datetime] | None = None,
    ) -> Claim:
        """Assign ``job_id`` to the best of ``candidates`` (node ids) atomically; see the module doc.
        ``exclude``: node ids or PeerIDs the job must leave or avoid (a re-dispatch names the lost node)."""
        if not candidates:
            raise ValidationError("no candidate node to claim", field="candidates", rule="C3")
        avoid = set(exclude)
        with self._tx() as conn:
            # The lock first: on SQLite this statement takes the write lock, on PostgreSQL the job row.
            touched = conn.execute(
                jobs.update().where(jobs.c.job_id == job_id).values(updated_at=jobs.c.updated_at)
            )
            if touched.rowcount == 0:
                raise NotFoundError("no such job", field="job_id")
            locked = _lock_nodes(conn, sorted(set(candidates) - avoid))
            row = conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).one()
            current = _job(row)
            _check_movable(conn, current, avoid)
            loads = _loads(conn, [n for n, _ in locked])
            best: tuple[tuple[int, float, float], str] | None = None
            for node_id, hardware in locked:
                held, newest = loads.get(node_id, (0, None))
                cap = max_jobs(hardware)
                if cap is not None and held >= cap:
                    continue  # the node runs all it said it can: never over-assign it
                beat = (heartbeats or {}).get(node_id)
                key = (
                    -held,
                    -(newest.timestamp() if newest is not None else float("-inf")),
                    beat.timestamp() if beat is not None else float("-inf"),
                )
                if best is None or key > best[0]:
                    best = (key, node_id)
            if best is None:
                raise ConflictError(
                    "every candidate node is gone, inactive or already holds as many open jobs as it runs",
                    field="node",
                    rule="C3",
                )
            node_id, assignment = best[1], new_assignment_id()
            revoke_grants(conn, job_id)  # the job token and URLs of the node it leaves die here (C3)
            done = conn.execute(
                jobs.update()
                .where(
                    jobs.c.job_id == job_id,
                    jobs.c.status == current.status,
                    jobs.c.node_id.is_(None)
                    if current.node_id is None
                    else jobs.c.node_id == current.node_id,
                )
                .values(node_id=node_id, status="assigned", assignment=assignment, updated_at=_now())
            )
            if done.rowcount != 1:  # pragma: no cover - the lock above makes this unreachable
                raise ConflictError("the job was assigned meanwhile", field="job_id", rule="C3")
            claimed = _job(conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).one())
        return Claim(job=claimed, node_id=node_id, assignment=assignment)


def _lock_nodes(conn: Connection, node_ids: list[str]) -> list[tuple[str, object]]:
    """The active candidates, locked (PostgreSQL: row locks in id order; SQLite holds the write lock)."""
    if not node_ids:
        return []
    query = (
        sa.select(nodes.c.node_id, nodes.c.hardware, nodes.c.status)
        .where(nodes.c.node_id.in_(node_ids))
        .order_by(nodes.c.node_id)
        .with_for_update()
    )
    return [(str(r.node_id), r.hardware) for r in conn.execute(query) if r.status == "active"]


def _check_movable(conn: Connection, job: JobRecord, avoid: set[str]) -> None:
    """A first dispatch takes a submitted job nobody holds; a re-dispatch moves an open job away from a
    node the caller named as lost. Anything else (assigned by another process, settled) is a conflict."""
    if job.node_id is None and job.status == CLAIMABLE:
        return
    if job.node_id is not None and job.status in OPEN_JOB_STATES:
        holder = conn.execute(sa.select(nodes.c.peer_id).where(nodes.c.node_id == job.node_id)).first()
        if job.node_id in avoid or (holder is not None and str(holder[0]) in avoid):
            return
        raise ConflictError(f"job is already {job.status} to node {job.node_id}", field="job_id", rule="C3")
    raise ConflictError(f"job is {job.status}: it cannot be dispatched", field="job_id", rule="C3")


def _loads(conn: Connection, node_ids: list[str]) -> dict[str, tuple[int, datetime | None]]:
    """Per node: open jobs it holds and when the newest job it was given was created."""
    if not node_ids:
        return {}
    held = sa.func.sum(sa.case((jobs.c.status.in_(sorted(OPEN_JOB_STATES)), 1), else_=0))
    query = (
        sa.select(jobs.c.node_id, held, sa.func.max(jobs.c.created_at))
        .where(jobs.c.node_id.in_(node_ids))
        .group_by(jobs.c.node_id)
    )
    return {str(n): (int(c or 0), _aware(newest)) for n, c, newest in conn.execute(query)}
