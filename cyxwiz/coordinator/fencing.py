"""What a node was given for a job dies when the job leaves it (issue 21; SPEC C3, B5, F1).

A node lost mid-job is replaced (``tasks/redispatch.py``): the job row names another node under a fresh
assignment id (:mod:`cyxwiz.coordinator.claims`). Everything the coordinator handed the lost node for the
job — its job token, the object URLs it presigned — is recorded here as a *grant* under the assignment it
was issued for, and is dead from the moment the assignment changes or the job ends: the claim and every
move to a settled state revoke the job's grants in the same transaction, and every node-facing check asks
:meth:`GrantRows.grant_refusal` before it lets one through. A grant the coordinator did not record (a URL
the trusted zone signed for itself) is left to the other rules.

S3 serves presigned URLs itself, so a URL issued to a lost node cannot be refused at use: see
``docs/reassignment.md`` for why such an upload is never what verification reads.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from urllib.parse import parse_qsl, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cyxwiz.authz.policies import RUN_LIVE_STATES
from cyxwiz.coordinator.records import JobRecord
from cyxwiz.coordinator.records import now as _now
from cyxwiz.coordinator.tables import job_grants

#: The signature parameter of our own presigned URLs (``cyxwiz.storage.urlsign``) and of S3's.
_SIGNATURES = ("sig", "X-Amz-Signature")


def url_grant_id(url: str) -> str | None:
    """The grant id of a presigned URL: a hash of its signature (None: the URL carries none)."""
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    return query_grant_id(query)


def query_grant_id(query: dict[str, str]) -> str | None:
    for name in _SIGNATURES:
        if query.get(name):
            return "url:" + hashlib.sha256(query[name].encode()).hexdigest()
    return None


def revoke_grants(conn: Connection, job_id: str) -> None:
    """Inside the caller's transaction: every grant of the job is dead (re-assigned or settled)."""
    conn.execute(
        job_grants.update()
        .where(job_grants.c.job_id == job_id, job_grants.c.revoked.is_(False))
        .values(revoked=True)
    )


def settles(status: object) -> bool:
    """Whether moving a job to ``status`` ends what its node may still do (C3)."""
    return isinstance(status, str) and status not in RUN_LIVE_STATES


class GrantRows:
    """Mixed into :class:`~cyxwiz.coordinator.store.CoordinatorStore`, which provides transactions."""

    def _tx(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def record_grant(self, grant_id: str, *, job: JobRecord, kind: str) -> None:
        """Remember that ``job``'s current node was given ``grant_id`` (a job token's jti, a URL's
        signature hash) under the job's current assignment. A grant id names one issuance (jtis and URL
        nonces are random); recording it again re-points it to the current assignment.
        """
        if job.node_id is None or job.assignment is None:
            return  # nothing is handed out before a claim; the other rules refuse it anyway
        with self._tx() as conn:
            conn.execute(job_grants.delete().where(job_grants.c.grant_id == grant_id))
            conn.execute(
                job_grants.insert().values(
                    grant_id=grant_id, job_id=job.job_id, node_id=job.node_id, assignment=job.assignment,
                    kind=kind, revoked=False, issued_at=_now(),
                )
            )  # fmt: skip

    def grant_refusal(self, grant_id: str | None, *, job: JobRecord) -> str | None:
        """Why the grant may no longer act on ``job`` (a reason naming the rule), or None when it is live
        or was never recorded."""
        if grant_id is None:
            return None
        with self._tx() as conn:
            row = conn.execute(sa.select(job_grants).where(job_grants.c.grant_id == grant_id)).first()
        if row is None:
            return None
        label = "job token" if row.kind == "job-token" else "URL"
        if row.job_id != job.job_id:
            return f"{label} is for another job"
        if row.assignment != job.assignment or row.node_id != job.node_id:
            return (
                f"{label} is dead: the job was re-assigned to another node, only its current node may act "
                "on it"
            )
        if row.revoked:
            return f"{label} is dead: job is {job.status}"
        return None
