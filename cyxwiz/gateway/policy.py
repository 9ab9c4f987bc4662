"""The gateway's allow-list of Prefect API routes (SPEC C3; ARCHITECTURE "facts": what a worker calls).

Each allowed route names what it touches so the proxy can check it belongs to the calling node: the GPU
work pool, the node's own work queue, flow runs in that queue (and the deployments/flows they reference),
logs of those runs. Anything not listed is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from cyxwiz.authz.policies import RULES, Rule

Scope = Literal[
    "global",  # harmless server metadata
    "pool",  # the GPU work pool itself
    "queue_filter",  # list queues of the pool: answer narrowed to the node's queue
    "scheduled_runs",  # poll for runs: request narrowed to the node's queue
    "work_queue",  # a queue by id: must be the node's
    "flow_run",  # a flow run by id: must be in the node's queue
    "run_filter",  # list flow runs (cancellation observer): request and answer narrowed to the node's queue
    "deployment",  # referenced by one of the node's flow runs
    "flow",  # referenced by one of the node's flow runs
    "logs",  # every log line must belong to one of the node's flow runs
    "artifact_create",  # an artifact of one of the node's flow runs (progress, training curve)
    "artifact",  # an artifact by id: must be one the node created
    "events_in",  # websocket: events the node emits
    "events_out",  # websocket: subscription narrowed to the node's runs
    "worker_connect",  # websocket: worker heartbeat channel of the pool
    "worker_heartbeat",  # HTTP worker heartbeat: only as the node's own worker
]

_ID = r"(?P<id>[0-9a-fA-F-]{36})"
_POOL = r"(?P<pool>[A-Za-z0-9_.-]{1,128})"


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    scope: Scope
    websocket: bool = False
    #: Its line of the one authorization table (role, scope, resource rule): ``gateway.<scope>``.
    rule: Rule = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", RULES[f"gateway.{self.scope}"])


def _r(methods: str, path: str, scope: Scope, websocket: bool = False) -> Route:
    return Route(frozenset(methods.split("|")), re.compile(f"/api{path}"), scope, websocket)


ROUTES: tuple[Route, ...] = (
    _r("GET", "/csrf-token", "global"),
    _r("GET", "/admin/version", "global"),
    _r("GET", "/admin/storage", "global"),
    _r("GET", "/health", "global"),
    _r("GET", f"/work_pools/{_POOL}/?", "pool"),
    _r("POST", f"/work_pools/{_POOL}/queues/filter/?", "queue_filter"),
    _r("POST", f"/work_pools/{_POOL}/get_scheduled_flow_runs/?", "scheduled_runs"),
    _r("POST", f"/work_pools/{_POOL}/workers/heartbeat/?", "worker_heartbeat"),
    _r("GET", f"/work_queues/{_ID}/?", "work_queue"),
    _r("POST", "/flow_runs/filter/?", "run_filter"),
    _r("GET|PATCH", f"/flow_runs/{_ID}/?", "flow_run"),
    _r("POST", f"/flow_runs/{_ID}/set_state/?", "flow_run"),
    _r("PATCH", f"/flow_runs/{_ID}/labels/?", "flow_run"),
    _r("GET", f"/deployments/{_ID}/?", "deployment"),
    _r("GET", f"/flows/{_ID}/?", "flow"),
    _r("POST", "/logs/?", "logs"),
    _r("POST", "/artifacts/?", "artifact_create"),
    _r("PATCH", f"/artifacts/{_ID}/?", "artifact"),
    _r("GET", "/events/in/?", "events_in", websocket=True),
    _r("GET", "/events/out/?", "events_out", websocket=True),
    _r("GET", f"/work_pools/{_POOL}/workers/connect/?", "worker_connect", websocket=True),
)


@dataclass(frozen=True)
class Match:
    route: Route
    pool: str | None
    object_id: str | None


def match(method: str, path: str, *, websocket: bool) -> Match | None:
    """The allow-list entry for this call, or None (refused)."""
    for route in ROUTES:
        if route.websocket != websocket or method not in route.methods:
            continue
        found = route.pattern.fullmatch(path)
        if found is not None:
            groups = found.groupdict()
            return Match(route, groups.get("pool"), groups.get("id"))
    return None
