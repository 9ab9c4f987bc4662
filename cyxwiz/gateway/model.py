"""What the gateway knows of a caller and of what each node owns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cyxwiz.tokens.claims import VerifiedToken
from cyxwiz.transport.identity import PeerIdentity


@dataclass
class NodeView:
    """What one node has been shown to own (learned from upstream answers, never from the node)."""

    runs: dict[str, str | None] = field(default_factory=dict)  # flow run id -> job id
    deployments: set[str] = field(default_factory=set)
    flows: set[str] = field(default_factory=set)
    artifacts: set[str] = field(default_factory=set)
    #: artifact id -> the flow run it was created for: a run whose job moved on takes its artifacts along
    artifact_runs: dict[str, str] = field(default_factory=dict)
    queue_ids: set[str] = field(default_factory=set)
    #: Cleanup messages the worker channel delivered to this node (their ids may be acknowledged).
    cleanup_messages: set[str] = field(default_factory=set)


#: The owner recorded for a task run the Prefect API holds under no run of the node that asked: another
#: node's, the control plane's, or one with no flow run. No node may name it.
FOREIGN_TASK_RUN = ""


class TaskRuns:
    """Which node each task run is (SPEC C3; issue 18).

    Prefect creates a task run from the events its flow-run engine emits (there is no task_runs POST),
    with an id the client chose. The gateway attributes an id it has not seen by asking the API
    (:meth:`cyxwiz.gateway.objects.OwnedObjects._attribute_task_run`): one the API does not hold yet is
    the node's that names it first, in an accepted event about its own flow run; one the API holds is the
    node's only under one of that node's flow runs. Any other node naming it — in an event, a log line, an
    artifact — is refused, and events about it are not shown to others. Bounded: the oldest entries go
    first (ids are random UUIDs; a forgotten one is attributed by the API again).
    """

    def __init__(self, *, max_entries: int = 200_000) -> None:
        from collections import OrderedDict

        self.max_entries = max_entries
        self._owner: OrderedDict[str, str] = OrderedDict()

    def claim(self, task_run_id: str, node_id: str) -> bool:
        """True when the task run is (now) ``node_id``'s; False when it is another node's."""
        owner = self._owner.get(task_run_id)
        if owner is None:
            self._owner[task_run_id] = node_id
            while len(self._owner) > self.max_entries:
                self._owner.popitem(last=False)
            return True
        return owner == node_id

    def owner(self, task_run_id: str) -> str | None:
        """The node the task run is, :data:`FOREIGN_TASK_RUN`, or None when not attributed yet."""
        return self._owner.get(task_run_id)

    def record_foreign(self, task_run_id: str) -> None:
        self._owner[task_run_id] = FOREIGN_TASK_RUN
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)


@dataclass(frozen=True)
class Caller:
    node_id: str
    queue: str
    peer: PeerIdentity
    token: VerifiedToken
    ip: str | None


def artifact_namespace(node_id: str) -> str:
    """The artifact key prefix of one node (Prefect keys are lower-case words and dashes). Derived from
    the node id (its PeerID), so two certificates with one CN never share it."""
    import hashlib

    return "node-" + hashlib.sha256(node_id.encode()).hexdigest()[:16]


def job_id_of(run: dict[str, Any]) -> str | None:
    params = run.get("parameters") or {}
    if isinstance(params, dict) and isinstance(params.get("job_id"), str):
        return str(params["job_id"])
    for tag in run.get("tags") or []:
        if isinstance(tag, str) and tag.startswith("cyxwiz-job:"):
            return tag.removeprefix("cyxwiz-job:")
    return None
