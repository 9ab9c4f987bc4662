"""What a node owns in the Prefect API, as the gateway learns it, and the rules over each object a call
names (SPEC C3, B1): its flow runs (and their job tokens), deployments, flows, queue, worker, logs and
artifacts. Mixed into :class:`cyxwiz.gateway.proxy.Gateway`, which provides identity and decisions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx

from cyxwiz.audit import AuditSink
from cyxwiz.authz.policies import RUN_LIVE_STATES
from cyxwiz.errors import AuthenticationError, ValidationError
from cyxwiz.gateway import run_changes
from cyxwiz.gateway.events import worker_name
from cyxwiz.gateway.ids import canonical_uuid, canonical_uuid_or_none
from cyxwiz.gateway.model import Caller, NodeView, TaskRuns, artifact_namespace, job_id_of
from cyxwiz.gateway.policy import Match
from cyxwiz.gateway.standing import Standing
from cyxwiz.tokens.kinds import TokenKind
from cyxwiz.tokens.verifier import TokenVerifier

#: What a node may change on its own flow run: what Prefect's engine (name, version, retry policy) and
#: worker (infrastructure pid) set. Not where the run lives (queue, pool, deployment), nor what says whose
#: job it is (parameters, tags: the job id the job-token rule reads) nor its job variables.
_PATCHABLE_RUN_FIELDS = frozenset({"name", "flow_version", "empirical_policy", "infrastructure_pid"})
#: New (not yet attributed) task runs one log batch may name.
MAX_NEW_TASK_RUNS_PER_BATCH = 256
#: Prefect's artifact keys: lower-case ASCII letters, digits and dashes.
_ARTIFACT_KEY = re.compile(r"[a-z0-9-]+")


class OwnedObjects:
    """The ownership half of the gateway: learned views and the per-object rules."""

    pool: str
    verifier: TokenVerifier
    audit: AuditSink | None
    require_job_token: bool
    standing: Standing | None
    views: dict[str, NodeView]
    pool_ids: set[str]
    task_runs: TaskRuns
    _client: httpx.AsyncClient
    _upstream_headers: dict[str, str]

    def _decide(self, caller: Caller, resource: str, action: str, allowed: bool, reason: str) -> None:
        raise NotImplementedError

    def view(self, node_id: str) -> NodeView:
        return self.views.setdefault(node_id, NodeView())

    def _learn(self, caller: Caller, run: dict[str, Any]) -> bool:
        """Record ``run`` as the caller's when it sits in the caller's queue of our pool (a run in a
        ``get_scheduled_flow_runs`` answer names no pool: that answer comes from the GPU pool's own route)."""
        if run.get("work_queue_name") != caller.queue or run.get("work_pool_name") not in (None, self.pool):
            return False
        run_id = canonical_uuid_or_none(run.get("id"))
        if run_id is None:
            return False
        view = self.view(caller.node_id)
        view.runs[run_id] = job_id_of(run)
        for key, known in (
            ("deployment_id", view.deployments),
            ("flow_id", view.flows),
            ("work_queue_id", view.queue_ids),
        ):
            ident = canonical_uuid_or_none(run.get(key))
            if ident is not None:
                known.add(ident)
        return True

    async def _owns_run(self, caller: Caller, run_id: str) -> bool:
        run_id = canonical_uuid(run_id, field="flow_run_id")
        if run_id in self.view(caller.node_id).runs:
            return True
        resp = await self._client.get(f"/api/flow_runs/{run_id}", headers=self._upstream_headers)
        return resp.status_code == 200 and self._learn(caller, resp.json())

    def _check_job_token(self, scope: dict[str, Any], caller: Caller, run_id: str) -> None:
        """A call on a job's flow run also needs that job's token (SPEC B1, C3).

        The session token says which node is calling; the job token says the node still holds the job
        (the coordinator mints it at assignment and revokes it when the job ends). A stolen session token
        alone therefore cannot read or steer a job's run. Runs that carry no job (a node health check)
        hold nothing a job token would protect.
        """
        if not self.require_job_token:
            return
        expected = self.view(caller.node_id).runs.get(canonical_uuid(run_id, field="flow_run_id"))
        if expected is None:
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"x-cyxwiz-job-token", b"").decode("latin-1").strip()
        if not raw:
            raise AuthenticationError(
                "a call on a job's flow run needs that job's token", field="x-cyxwiz-job-token", rule="B1"
            )
        job = self.verifier.verify(raw, kind=TokenKind.JOB, peer_cert=caller.peer.certificate)
        ok = job.node_id == caller.node_id and job.job_id == expected
        why = "job token for this run" if ok else "job token is for another job"
        if ok and self.standing is not None and job.job_id is not None:
            # A job token dies with its job (revoke_job_token, released, refunded, failed); after the
            # proof the run may still finish (its outputs are frozen at the coordinator, not here). It also
            # dies when the job is re-dispatched to another node (issue 21).
            status = self.standing.job_status(job.job_id)
            moved = self.standing.job_refusal(job.job_id, node_id=caller.node_id, grant_id=job.jti)
            ok = status in RUN_LIVE_STATES and moved is None
            why = why if ok else moved or f"job token is dead: job is {status or 'unknown'}"
        self._decide(caller, f"flow_run:{run_id}", "job-token", ok, why)

    def _still_held(self, caller: Caller, resource: str, action: str, run_id: str) -> None:
        """A run of the node whose job was re-dispatched to another node is no longer the node's to write
        for: no logs, artifacts, events or state for it (issue 21, C3)."""
        job_id = self.view(caller.node_id).runs.get(run_id)
        if job_id is None or self.standing is None:
            return
        moved = self.standing.job_refusal(job_id, node_id=caller.node_id)
        if moved is not None:
            self._decide(caller, resource, action, False, moved)

    def _job_over(self, caller: Caller, run_id: str) -> str | None:
        """Why the node may write nothing more about its run ``run_id``: the run's job was re-dispatched
        to another node, or is over (settled, cancelled, its token revoked); None while it is the node's."""
        job_id = self.view(caller.node_id).runs.get(run_id)
        if job_id is None or self.standing is None:
            return None
        moved = self.standing.job_refusal(job_id, node_id=caller.node_id)
        if moved is not None:
            return moved
        status = self.standing.job_status(job_id)
        over = status is not None and status not in RUN_LIVE_STATES
        return f"job is over: job is {status}" if over else None

    def _job_alive(self, caller: Caller, resource: str, action: str, run_id: str) -> None:
        """What a node writes about a job's run (log lines, artifacts, events) needs the job to be the
        node's still and not over, as its job token does (issue 18; B1, C3)."""
        why = self._job_over(caller, run_id)
        if why is not None:
            self._decide(caller, resource, action, False, why)

    async def _attribute_task_run(self, caller: Caller, task_run: str) -> bool:
        """Whether the task run may be the caller's (fail closed, SPEC C3): the caller is its recorded
        owner; or the Prefect API does not hold it yet (a new one, the caller's once an accepted call
        names it); or the API holds it under one of the caller's flow runs. Another node's, the control
        plane's, one under no flow run, or an answer the gateway cannot read: not the caller's."""
        owner = self.task_runs.owner(task_run)
        if owner is not None:
            return owner == caller.node_id
        try:
            resp = await self._client.get(f"/api/task_runs/{task_run}", headers=self._upstream_headers)
        except httpx.TransportError:
            return False
        if resp.status_code == 404:
            return True
        if resp.status_code != 200:
            return False
        answer = resp.json()
        flow_run = canonical_uuid_or_none(answer.get("flow_run_id")) if isinstance(answer, dict) else None
        if flow_run is not None and await self._owns_run(caller, flow_run):
            self.task_runs.claim(task_run, caller.node_id)
            return True
        self.task_runs.record_foreign(task_run)
        return False

    async def _named_object(self, caller: Caller, resource: str, body: bytes, m: Match, *, path: str) -> None:
        """A deployment, flow, work queue or worker the call names must be the node's own."""
        kind = m.route.scope
        view = self.view(caller.node_id)
        if kind in ("deployment", "flow"):
            known = m.object_id in (view.deployments if kind == "deployment" else view.flows)
            why = f"{kind} of own run" if known else f"{kind} not of own runs"
        elif kind == "worker_heartbeat":
            known = (_json(body) if body else {}).get("name") == worker_name(caller.queue)
            why = "own worker" if known else "heartbeat for another worker"
        else:
            resp = await self._client.get(path, headers=self._upstream_headers)
            queue = resp.json() if resp.status_code == 200 else {}
            # A queue of that name in another pool is not the node's either (names are per pool).
            known = queue.get("name") == caller.queue and queue.get("work_pool_name") == self.pool
            why = "own queue" if known else "queue of another node"
            if known and m.object_id is not None:
                view.queue_ids.add(m.object_id)
        self._decide(caller, resource, kind, known, why)

    async def _flow_run(
        self, scope: dict[str, Any], caller: Caller, resource: str, body: bytes, m: Match
    ) -> None:
        assert m.object_id is not None
        owned = await self._owns_run(caller, m.object_id)
        self._decide(
            caller, resource, "flow_run", owned, "run in own queue" if owned else "flow run of another node"
        )
        self._still_held(caller, resource, "flow_run", canonical_uuid(m.object_id, field="flow_run_id"))
        self._check_job_token(scope, caller, m.object_id)
        if scope["method"] == "PATCH" and scope["path"].rstrip("/").endswith(m.object_id):
            changed = set(_json(body)) - _PATCHABLE_RUN_FIELDS if body else set()
            self._decide(
                caller,
                resource,
                "flow_run.patch",
                not changed,
                f"may not change {sorted(changed)}" if changed else "fields allowed",
            )
        elif scope["method"] == "PATCH":
            wrong = await run_changes.label_refusal(
                _json(body) if body else {}, queue=caller.queue, pool=self.pool, our_pool_id=self._our_pool_id
            )
            self._decide(caller, resource, "flow_run.labels", wrong is None, wrong or "own labels")
        elif scope["method"] == "POST":
            request = _json(body) if body else {}
            wrong = run_changes.state_refusal(
                request, m.object_id, parent=await self._parent_task_run(request, m.object_id)
            )
            self._decide(caller, resource, "flow_run.set_state", wrong is None, wrong or "own state")

    async def _parent_task_run(self, request: dict[str, Any], run_id: str) -> str | None:
        """The run's parent task run (the lifecycle's task that started it), read upstream only when the
        proposed state names a task run: Prefect's server writes that id into every state of such a run,
        and a worker marking a cancelled run Cancelled proposes a copy of the current state (with it)."""
        state = request.get("state")
        details = state.get("state_details") if isinstance(state, dict) else None
        if not isinstance(details, dict) or details.get("task_run_id") is None:
            return None
        resp = await self._client.get(f"/api/flow_runs/{run_id}", headers=self._upstream_headers)
        answer = resp.json() if resp.status_code == 200 else {}
        return canonical_uuid_or_none(answer.get("parent_task_run_id")) if isinstance(answer, dict) else None

    async def _our_pool_id(self, ident: str) -> bool:
        """Whether ``ident`` is the GPU pool's id (asked upstream once when not learned yet)."""
        if ident not in self.pool_ids:
            resp = await self._client.get(f"/api/work_pools/{self.pool}", headers=self._upstream_headers)
            if resp.status_code == 200 and canonical_uuid_or_none(resp.json().get("id")) == ident:
                self.pool_ids.add(ident)
        return ident in self.pool_ids

    def _narrow(self, kind: str, caller: Caller, body: bytes) -> tuple[bytes, Callable[[Any], Any]]:
        """Listing calls: whatever was asked, the request names only the node's queue, and the answer is
        filtered again to what is the node's (upstream is not trusted to have honoured the request)."""
        if kind == "queue_filter":
            return body, lambda items: [q for q in items if q.get("name") == caller.queue]
        request = _json(body) if body else {}
        if kind == "scheduled_runs":
            request["work_queue_names"] = [caller.queue]
            body = json.dumps(request).encode()
            return body, lambda items: [i for i in items if self._learn(caller, i.get("flow_run", {}))]
        # run_filter: the worker's cancellation observer asks for the state of its in-flight runs.
        runs = request.get("flow_runs")
        narrowed: dict[str, Any] = runs if isinstance(runs, dict) else {}
        narrowed["work_queue_name"] = {"any_": [caller.queue]}
        narrowed["operator"] = "and_"  # "or_" would make the queue one alternative among others
        request["flow_runs"] = narrowed
        request["work_pools"] = {"name": {"any_": [self.pool]}}
        # A job's parameters are read with that job's token (on the run itself), not in a listing.
        return json.dumps(request).encode(), lambda items: [
            {**r, "parameters": {}} for r in items if self._learn(caller, r)
        ]

    def _learn_pool(self, answer: Any) -> Any:
        ident = canonical_uuid_or_none(answer.get("id")) if isinstance(answer, dict) else None
        if ident is not None and answer.get("name") == self.pool:
            self.pool_ids.add(ident)
        return answer

    async def _logs(self, caller: Caller, resource: str, lines: list[dict[str, Any]]) -> None:
        """Every log line names one of the node's own flow runs: a line naming none is refused too (a log
        without a run lands in the server's global log, outside every job)."""
        runs = set()
        for line in lines:
            run_id = canonical_uuid_or_none(line.get("flow_run_id"))
            if run_id is None:
                self._decide(caller, resource, "logs", False, "log line names no flow run")
            runs.add(run_id)
        for run_id in runs:
            assert run_id is not None
            owned = await self._owns_run(caller, run_id)
            self._decide(
                caller, resource, "logs", owned, "logs of own run" if owned else "logs for another run"
            )
            self._job_alive(caller, resource, "logs", run_id)
        named = {str(line["task_run_id"]) for line in lines if line.get("task_run_id") is not None}
        unseen = {t for t in named if self.task_runs.owner(t) is None}
        if len(unseen) > MAX_NEW_TASK_RUNS_PER_BATCH:  # each costs a lookup upstream: no amplification (I)
            self._decide(caller, resource, "logs", False, "log batch names too many new task runs")
        for line in lines:
            await self._task_run(caller, resource, "logs", line)

    async def _task_run(self, caller: Caller, resource: str, action: str, item: dict[str, Any]) -> None:
        """A log line or artifact may name a task run: only one of the node's own (see
        :meth:`_attribute_task_run`), never another node's, and only by a canonical id."""
        raw = item.get("task_run_id")
        if raw is None:
            return
        task_run = canonical_uuid_or_none(raw)
        if task_run is None or not await self._attribute_task_run(caller, task_run):
            # (allowed ones are not audited one by one: a log batch names its task run on every line)
            self._decide(caller, resource, action, False, "names another node's task run")
        assert task_run is not None
        self.task_runs.claim(task_run, caller.node_id)

    async def _artifact(
        self, caller: Caller, resource: str, kind: str, body: bytes, m: Match
    ) -> tuple[bytes, Callable[[Any], Any] | None]:
        """Artifacts (progress, training curve) only for the node's own runs, under the node's own key
        namespace; updates only to its own."""
        view = self.view(caller.node_id)
        if kind == "artifact":
            known = m.object_id in view.artifacts
            self._decide(
                caller, resource, kind, known, "own artifact" if known else "artifact the node did not create"
            )
            run_of = view.artifact_runs.get(str(m.object_id))
            if run_of is not None:
                self._job_alive(caller, resource, kind, run_of)
            changes = _json(body) if body else {}
            moved = {"key", "flow_run_id", "task_run_id"} & set(changes)
            self._decide(
                caller,
                resource,
                kind,
                not moved,
                f"may not change {sorted(moved)}" if moved else "fields allowed",
            )
            return body, None
        request = _json(body) if body else {}
        run_id = canonical_uuid_or_none(request.get("flow_run_id"))
        owned = run_id is not None and await self._owns_run(caller, run_id)
        self._decide(
            caller, resource, kind, owned, "artifact of own run" if owned else "artifact for another run"
        )
        assert run_id is not None
        self._job_alive(caller, resource, kind, run_id)
        await self._task_run(caller, resource, kind, request)
        key = request.get("key")
        if key is not None:
            # The node's keys live in its own namespace (never verification-*, audit-*, ... of the control
            # plane): a key outside it is moved into it.
            namespace = artifact_namespace(caller.node_id)
            valid = isinstance(key, str) and _ARTIFACT_KEY.fullmatch(key) is not None
            self._decide(
                caller,
                resource,
                kind,
                valid,
                "artifact key" if valid else "artifact key is not lower-case words",
            )
            assert isinstance(key, str)
            request["key"] = key if key.startswith(namespace + "-") else f"{namespace}-{key}"
        request["flow_run_id"] = run_id

        def remember(created: Any) -> Any:
            ident = canonical_uuid_or_none(created.get("id")) if isinstance(created, dict) else None
            if ident is not None:
                view.artifacts.add(ident)
                view.artifact_runs[ident] = run_id
            return created

        return json.dumps(request).encode(), remember


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ValidationError("request body is not valid JSON", field="body") from None
    if not isinstance(value, dict):
        raise ValidationError("request body must be a JSON object", field="body")
    return value


def _json_list(body: bytes) -> list[dict[str, Any]]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ValidationError("request body is not valid JSON", field="body") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValidationError("logs must be a JSON list of objects", field="body")
    return value
