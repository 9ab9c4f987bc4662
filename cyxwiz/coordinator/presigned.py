"""Presigned object URLs die with the job and the node they were issued for (SPEC A6, C3, B5; issue 18).

A presigned URL is a bearer capability: its signature says the coordinator issued it, not that its holder
is still entitled to it. Served under the coordinator's ``/objects`` mount, every URL naming a job's
object is checked against the coordinator's records before the store sees it: the job must still be held
(assigned or running: after the proof its outputs are frozen) by a node that is neither banned nor
revoked, and a URL the presign route issued must have been issued under the job's current assignment (a
node the job was re-dispatched away from holds dead URLs, issue 21). A ban, a revocation or a re-dispatch
therefore reaches URLs issued before it at once, not when they expire.
(URLs a cloud store serves directly end with their short lifetime instead.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from cyxwiz.authz.policies import OPEN_JOB_STATES
from cyxwiz.coordinator.fencing import query_grant_id
from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import AuthorizationError, NotFoundError
from cyxwiz.storage import layout

_CUT_OFF = frozenset({"banned", "revoked"})


def presigned_gate(store: CoordinatorStore, *, mount: str = "/objects") -> Callable[[dict[str, Any]], None]:
    """The check in front of the presigned store app (a :class:`~cyxwiz.coordinator.limits.BodyRoute`
    gate): raises :class:`AuthorizationError` (403) for a URL of a job that is no longer its node's."""
    prefix = mount.rstrip("/") + "/"

    def gate(scope: dict[str, Any]) -> None:
        path = str(scope.get("path", ""))
        job_id = layout.job_of(path[len(prefix) :]) if path.startswith(prefix) else None
        if job_id is None:
            return  # not a job's object (a user's dataset upload): the URL's own rules apply
        try:
            job = store.job(job_id)
            node = store.node(job.node_id) if job.node_id is not None else None
        except NotFoundError:
            job, node = None, None
        if job is None or job.status not in OPEN_JOB_STATES:
            status = job.status if job is not None else "unknown"
            raise AuthorizationError(
                f"the URL's job is {status}: its object URLs are dead", field="url", rule="C3"
            )
        if node is None or node.status in _CUT_OFF:
            status = node.status if node is not None else "unknown"
            raise AuthorizationError(f"the URL's node is {status}", field="url", rule="A6")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        dead = store.grant_refusal(query_grant_id(query), job=job)
        if dead is not None:  # issued to the node the job was taken from (a re-dispatch): refused at use
            raise AuthorizationError(dead, field="url", rule="C3")

    return gate
