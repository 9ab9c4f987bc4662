"""A hostile node against the real gateway in front of a real Prefect server (issue 18; SPEC C3, B1, I, H2).

A real coordinator and a real gateway over mTLS (sharing the coordinator's records), a real
``prefect server`` behind the gateway with a GPU pool, one queue per node and one job's flow run per
node. node-a attacks on every channel — events/in (incl. task-run events whose payload would re-point
Prefect's task-run recorder), events/out, the worker channel, flow runs (read, PATCH, labels, set_state),
listing filters, logs, artifacts, identifiers, headers, bodies, and its job token once the job is over —
and each attack is checked three ways: the refusal (status or close code), the audit event, and that
nothing changed in Prefect. A positive control (node-a's honest call) goes beside each.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from cyxwiz.audit import MemorySink
from cyxwiz.coordinator.service import CoordinatorHandle
from cyxwiz.gateway.model import artifact_namespace
from cyxwiz.gateway.service import build_gateway
from cyxwiz.gateway.standing import StoreStanding
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.transport.server import MTLSServer
from cyxwiz.transport.tls import client_context
from tests._coordinator import start_dev_coordinator

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

TAG = uuid.uuid4().hex[:8]
POOL = f"rt-gpu-{TAG}"


@dataclass
class Node:
    name: str
    node_id: str
    session: str
    job_id: str
    run_id: str
    job_token: str = ""


@dataclass
class World:
    pki: DevPKI
    api: str  # the Prefect API (…/api), reached directly by the test as the control plane
    coord: CoordinatorHandle
    gateway: MTLSServer
    audit: MemorySink
    a: Node
    b: Node

    def ctx(self, name: str) -> Any:
        return client_context(
            trust_bundle=self.pki.bundle, cert=self.pki.node_cert(name), key=self.pki.node_key(name)
        )

    def gw(self, node: Node, *, job: bool = False) -> httpx.Client:
        headers = {"authorization": f"Bearer {node.session}"}
        if job:
            headers["x-cyxwiz-job-token"] = node.job_token
        return httpx.Client(
            base_url=self.gateway.url, verify=self.ctx(node.name), headers=headers, timeout=30
        )

    def ws(self, node: Node, path: str) -> Any:
        url = self.gateway.url.replace("https", "wss") + path
        ws = ws_connect(url, ssl=self.ctx(node.name), subprotocols=["prefect"])  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": f"node:{node.session}"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "auth_success"  # the real server answered
        return ws

    def prefect(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.api + path, timeout=30, **kwargs)

    def refusals(self, action: str | None = None) -> list[str]:
        return [
            str(e.details.get("reason"))
            for e in self.audit.events
            if e.outcome.value != "success" and (action is None or e.action == action)
        ]


def _prefect_setup(api: str, queues: list[str], jobs: list[str]) -> list[str]:
    """The control plane's side: the pool, a queue per node, a deployment, a job's flow run per node."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = client.create_flow_from_name("redteam-node-surface")
        runs = []
        for queue, job in zip(queues, jobs, strict=True):
            client.create_work_queue(name=queue, work_pool_name=POOL)
            deployment = client.create_deployment(
                flow_id=flow_id,
                name=f"rt-{queue[-12:]}",
                work_pool_name=POOL,
                work_queue_name=queue,
                enforce_parameter_schema=False,
            )
            run = client.create_flow_run_from_deployment(
                deployment, parameters={"job_id": job}, work_queue_name=queue
            )
            runs.append(str(run.id))
    return runs


@pytest.fixture(scope="module")
def world(prefect_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("node-surface")
    pki = build_dev_pki(tmp / "pki", nodes=("node-a", "node-b"))
    audit = MemorySink()
    coord = start_dev_coordinator(pki, tmp / "state", audit)
    api = str(prefect_server.api_url)
    gateway, _ = build_gateway(
        cert=pki.gateway_cert,
        key=pki.gateway_key,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        upstream=api.removesuffix("/api"),
        pool=POOL,
        verifier=coord.verifier,
        audit=audit,
        standing=StoreStanding(coord.store),
        revocation_interval=0.2,
    )
    gateway.start()
    try:
        nodes = []
        for name in ("node-a", "node-b"):
            ctx = client_context(trust_bundle=pki.bundle, cert=pki.node_cert(name), key=pki.node_key(name))
            with httpx.Client(base_url=coord.url, verify=ctx, timeout=30) as c:
                reg = c.post("/v1/nodes/register", json={"hardware": {"gpus": 1}}).json()
            job = coord.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=600)
            coord.store.assign_job(job.job_id, reg["node_id"])
            nodes.append(Node(name, reg["node_id"], reg["session_token"], job.job_id, ""))
        runs = _prefect_setup(api, [n.node_id for n in nodes], [n.job_id for n in nodes])
        for node, run in zip(nodes, runs, strict=True):
            node.run_id = run
            ctx = client_context(
                trust_bundle=pki.bundle, cert=pki.node_cert(node.name), key=pki.node_key(node.name)
            )
            with httpx.Client(base_url=coord.url, verify=ctx, timeout=30) as c:
                headers = {"authorization": f"Bearer {node.session}"}
                node.job_token = c.get(f"/v1/jobs/{node.job_id}/token", headers=headers).json()["job_token"]
        built = World(pki, api, coord, gateway, audit, nodes[0], nodes[1])
        _AUDIT.append(built)
        for node in nodes:  # each node's worker polls its queue: the gateway learns its run
            with built.gw(node) as c:
                polled = c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})
                assert node.run_id in polled.text
        yield built
    finally:
        gateway.stop()
        coord.stop()


_AUDIT: list[World] = []


def _until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} (audited refusals: {_AUDIT[-1].refusals()[-5:]})"
        time.sleep(0.3)


def _task_event(task_id: str, run_id: str, *, role: str = "flow-run", **task_run: Any) -> str:
    """A task-run state event as Prefect's engine emits it (``emit_task_run_state_change_event``)."""
    state = {"type": "PENDING", "name": "Pending", "message": "", "state_details": {}, "data": None}
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "occurred": dt.datetime.now(dt.UTC).isoformat(),
            "event": "prefect.task-run.Pending",
            "resource": {
                "prefect.resource.id": f"prefect.task-run.{task_id}",
                "prefect.resource.name": "t",
                "prefect.orchestration": "client",  # what Prefect's task-run recorder acts on
            },
            "related": [{"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": role}],
            "payload": {
                "intended": {"from": None, "to": "PENDING"},
                "initial_state": None,
                "validated_state": state,
                "task_run": {"name": "t", "task_key": "rt-step", "dynamic_key": "0", **task_run},
            },
        }
    )


def _event(name: str, run_id: str, related: tuple[str, ...] = ()) -> str:
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "occurred": dt.datetime.now(dt.UTC).isoformat(),
            "event": name,
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"},
            "related": [
                {"prefect.resource.id": r, "prefect.resource.role": r.split(".")[1]} for r in related
            ],
        }
    )


def _task_runs_of(world: World, run_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"id": {"any_": [run_id]}}}
    return list(world.prefect("POST", "/task_runs/filter", json=body).json())


def _events_named(world: World, prefix: str) -> list[str]:
    body = {"filter": {"event": {"prefix": [prefix]}}, "limit": 50}
    answer = world.prefect("POST", "/events/filter", json=body).json()
    return [e["event"] for e in answer.get("events", [])]


def test_events_in_task_runs_and_every_named_resource(world: World) -> None:
    """Task runs are recorded from events: one whose payload names another node's flow run (or task run),
    or that names its own flow run in another role, would be filed by Prefect's recorder under a run
    that is not the node's. Dropped, audited, nothing recorded; node-a's honest task run is recorded."""
    a, b = world.a, world.b
    theirs = str(uuid.uuid4())
    ws_b = world.ws(b, "/api/events/in")
    ws_b.send(_task_event(theirs, b.run_id))  # node-b's own task run (control: recorded under b's run)
    _until(lambda: world.prefect("GET", f"/task_runs/{theirs}").status_code == 200, "b's task run")
    ws_b.close()
    forged = {name: str(uuid.uuid4()) for name in ("payload-run", "payload-id", "role")}
    mine = str(uuid.uuid4())
    ws = world.ws(a, "/api/events/in")
    for message in (
        _task_event(forged["payload-run"], a.run_id, flow_run_id=b.run_id),
        _task_event(forged["payload-id"], a.run_id, id=theirs, state_name="Completed"),
        _task_event(forged["role"], a.run_id, role="parent"),
        _task_event(theirs, a.run_id),  # node-b's task run, next to a's own run
        _event(f"rt{TAG}.forged.related", a.run_id, (f"prefect.flow-run.{b.run_id}",)),
        _event(f"rt{TAG}.forged.other-run", b.run_id),
        _event(f"rt{TAG}.forged.upper", b.run_id.upper()),
        _task_event(mine, a.run_id),  # positive control, sent last
        _event(f"rt{TAG}.own", a.run_id),  # positive control
    ):
        ws.send(message)
    _until(lambda: world.prefect("GET", f"/task_runs/{mine}").status_code == 200, "a's own task run")
    _until(lambda: f"rt{TAG}.own" in _events_named(world, f"rt{TAG}."), "a's own event")
    ws.close()
    assert world.prefect("GET", f"/task_runs/{mine}").json()["flow_run_id"] == a.run_id
    assert [t["id"] for t in _task_runs_of(world, b.run_id)] == [theirs]  # nothing filed under b's run
    for task_id in forged.values():
        assert world.prefect("GET", f"/task_runs/{task_id}").status_code == 404
    assert world.prefect("GET", f"/task_runs/{theirs}").json()["state"]["name"] == "Pending"
    assert _events_named(world, f"rt{TAG}.") == [f"rt{TAG}.own"]
    reasons = world.refusals("events_in.event")
    assert "task-run event payload names its task run or flow run itself" in reasons
    assert "task-run event must name its own flow run exactly once (role flow-run)" in reasons
    assert "event about a resource that is not the node's (task-run)" in reasons
    assert "event about a resource that is not the node's (flow-run)" in reasons


def test_events_out_shows_only_the_nodes_runs(world: World) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    a, b = world.a, world.b
    ws = world.ws(a, "/api/events/out")
    # Asks for everything, and for b's run by name: the gateway narrows the filter and every event.
    ws.send(
        json.dumps({"type": "filter", "filter": {"any_resource": {"id": [f"prefect.flow-run.{b.run_id}"]}}})
    )
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(b.run_id, Pending(), force=True)
        client.set_flow_run_state(a.run_id, Pending(), force=True)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and f"prefect.flow-run.{a.run_id}" not in seen:
            message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("type") == "event":
                seen.append(message["event"]["resource"]["prefect.resource.id"])
        time.sleep(1)  # anything about b's run that was on its way
        while True:
            message = json.loads(ws.recv(timeout=0.5))
            if message.get("type") == "event":
                seen.append(message["event"]["resource"]["prefect.resource.id"])
    except TimeoutError:
        pass
    finally:
        ws.close()
    assert f"prefect.flow-run.{a.run_id}" in seen  # positive control: a's own run's state event
    assert not [s for s in seen if b.run_id in s]


def _hello(node: Node, **payload: Any) -> str:
    from prefect.client.schemas import worker_channel as wc

    base = {
        "consumer_id": str(uuid.uuid4()),
        "worker_name": f"cyxwiz-{node.node_id}",
        "worker_type": "process",
        "heartbeat_interval_seconds": 30,
        "supported_channel_versions": [wc.WORK_POOL_WORKER_CHANNEL_VERSION],
        "requested_capabilities": [wc.WORKER_HEARTBEAT_CAPABILITY, wc.WORK_POOL_SNAPSHOT_CAPABILITY],
        "work_queue_names": [node.node_id],
    }
    frame = {
        "type": "worker.hello.v1",
        "id": str(uuid.uuid4()),
        "sent_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    return json.dumps({**frame, "payload": {**base, **payload}})


@pytest.mark.parametrize(
    "hello",
    [
        {},  # positive control: the node's own worker on its own queue
        {"worker_name": "cyxwiz-{b}"},
        {"work_queue_names": []},  # [] means every queue of the pool
        {"work_queue_names": ["{b}"]},
        {"work_queue_names": ["{a}", "{b}"]},
    ],
)
def test_worker_channel_speaks_only_as_the_nodes_worker(world: World, hello: dict[str, Any]) -> None:
    a, b = world.a, world.b
    fill = {
        k: json.loads(json.dumps(v).replace("{a}", a.node_id).replace("{b}", b.node_id))
        for k, v in hello.items()
    }
    before = len(world.refusals("worker_connect.message"))
    ws = world.ws(a, f"/api/work_pools/{POOL}/workers/connect")
    ws.send(_hello(a, **fill))
    try:
        answer: Any = json.loads(ws.recv(timeout=30))["type"]
    except ConnectionClosed as closed:
        answer = closed.rcvd.code if closed.rcvd else None
    finally:
        ws.close()
    if not hello:
        assert answer == "worker.ready.v1"  # the real server took the node's own hello
        return
    assert answer == 1008
    assert len(world.refusals("worker_connect.message")) == before + 1


def test_flow_runs_ids_labels_state_and_listings(world: World) -> None:
    from prefect.client.orchestration import get_client

    a, b = world.a, world.b
    with world.gw(a, job=True) as c:
        assert c.get(f"/api/flow_runs/{a.run_id}").status_code == 200  # positive control
        assert c.get(f"/api/flow_runs/{a.run_id.upper()}").status_code == 200  # same run, other spelling
        for spelling in (
            b.run_id,
            b.run_id.upper(),
            f" {b.run_id}",
            b.run_id.replace("-", ""),
            "{" + b.run_id + "}",
            f"urn:uuid:{b.run_id}",
            f"{a.run_id}/../{b.run_id}",
            f"{a.run_id}%2F..%2F{b.run_id}",
        ):
            assert c.get(f"/api/flow_runs/{spelling}").status_code in (403, 404, 422), spelling
        state = f"/api/flow_runs/{a.run_id}/set_state"
        running = {"type": "RUNNING", "data": {"storage_key": "k", "serializer": {"type": "json"}}}
        assert c.post(state, json={"state": running, "force": True}).status_code == 201  # positive control
        verdict = {"artifact_key": f"verification-{TAG}", "artifact_type": "markdown", "value": "PASS"}
        for forged in (
            {"type": "RUNNING", "data": verdict},  # Prefect would make an artifact under that key
            {"type": "RUNNING", "state_details": {"flow_run_id": b.run_id}},
            {"type": "RUNNING", "state_details": {"child_flow_run_id": b.run_id}},
        ):
            assert c.post(state, json={"state": forged, "force": True}).status_code == 403, forged
        assert (
            c.post(f"/api/flow_runs/{b.run_id}/set_state", json={"state": {"type": "CANCELLED"}}).status_code
            == 403
        )
        moved = c.patch(f"/api/flow_runs/{a.run_id}", json={"work_queue_name": b.node_id, "parameters": {}})
        assert moved.status_code == 403
        assert c.patch(f"/api/flow_runs/{a.run_id}", json={"name": "renamed"}).status_code == 204
        own_labels = {"prefect.worker.name": f"cyxwiz-{a.node_id}", "prefect.work-pool.name": POOL, "x": "1"}
        assert c.patch(f"/api/flow_runs/{a.run_id}/labels", json=own_labels).status_code == 204
        for forged in (
            {"prefect.worker.name": f"cyxwiz-{b.node_id}"},
            {"prefect.work-pool.name": "control"},
            {"prefect.deployment.id": str(uuid.uuid4())},
            {"prefect.work-pool.id": str(uuid.uuid4())},
        ):
            assert c.patch(f"/api/flow_runs/{a.run_id}/labels", json=forged).status_code == 403, forged
        listed = c.post(
            "/api/flow_runs/filter",
            json={
                "flow_runs": {"operator": "or_", "id": {"any_": [b.run_id]}},
                "work_pools": {"operator": "or_"},
            },
        )
        assert listed.status_code == 200 and b.run_id not in listed.text
        polled = c.post(
            f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={"work_queue_names": [b.node_id]}
        )
        assert polled.status_code == 200 and b.run_id not in polled.text
        # Headers off the allow-list stay at the gateway; a body on a GET is refused.
        override = {
            "x-http-method-override": "DELETE",
            "x-forwarded-host": "evil",
            "x-original-url": "/api/admin",
        }
        assert c.get(f"/api/flow_runs/{a.run_id}", headers=override).status_code == 200
        body = c.request("GET", f"/api/flow_runs/{a.run_id}", content=b'{"state": {"type": "CANCELLED"}}')
        assert body.status_code == 422 and body.json()["field"] == "body"
    with world.gw(a) as c:  # the session token alone does not reach a job's run
        assert c.get(f"/api/flow_runs/{a.run_id}").status_code == 401
    with get_client(sync_client=True) as client:
        run_a, run_b = client.read_flow_run(a.run_id), client.read_flow_run(b.run_id)
    assert (
        run_a.name == "renamed"
        and run_a.work_queue_name == a.node_id
        and run_a.parameters == {"job_id": a.job_id}
    )
    assert run_a.labels.get("x") == "1" and run_a.labels.get("prefect.worker.name") == f"cyxwiz-{a.node_id}"
    assert run_b.state is not None and run_b.state.type.value != "CANCELLED"
    reasons = world.refusals()
    assert "flow run of another node" in reasons
    assert any(r.startswith("may not change ['parameters', 'work_queue_name']") for r in reasons)
    assert any(r.startswith("label 'prefect.worker.name' is not the node's") for r in reasons)
    assert "label names another work pool" in reasons
    assert "state data may not name an artifact (key, type or description)" in reasons
    assert "state names another flow run" in reasons
    forged_verdicts = {"artifacts": {"key": {"any_": [f"verification-{TAG}"]}}}
    assert world.prefect("POST", "/artifacts/filter", json=forged_verdicts).json() == []


def test_logs_and_artifacts_stay_in_the_nodes_runs_and_namespace(world: World) -> None:
    a, b = world.a, world.b
    now = dt.datetime.now(dt.UTC).isoformat()

    def line(message: str, **fields: Any) -> dict[str, Any]:
        return {
            "name": "rt",
            "level": 20,
            "message": message,
            "timestamp": now,
            "flow_run_id": a.run_id,
            **fields,
        }

    b_task = _task_runs_of(world, b.run_id)[0]["id"] if _task_runs_of(world, b.run_id) else None
    with world.gw(a) as c:
        assert c.post("/api/logs/", json=[line("rt-own")]).status_code in (200, 201)  # positive control
        for batch in (
            [line("rt-forged-none", flow_run_id=None)],
            [line("rt-ok"), {k: v for k, v in line("rt-forged-missing").items() if k != "flow_run_id"}],
            [line("rt-forged-other", flow_run_id=b.run_id)],
            [line("rt-forged-upper", flow_run_id=b.run_id.upper())],
            [line("rt-forged-braced", flow_run_id="{" + a.run_id + "}")],
            *([[line("rt-forged-task", task_run_id=b_task)]] if b_task else []),
        ):
            assert c.post("/api/logs/", json=batch).status_code in (403, 422), batch
        ns = artifact_namespace(a.node_id)
        made = c.post(
            "/api/artifacts/",
            json={
                "key": f"verification-{a.job_id}".lower(),
                "flow_run_id": a.run_id,
                "type": "markdown",
                "data": "forged verdict",
            },
        )
        assert made.status_code in (200, 201), made.text  # rewritten into the node's namespace
        assert made.json()["key"] == f"{ns}-verification-{a.job_id}".lower()
        assert (
            c.post(
                "/api/artifacts/", json={"key": "x", "flow_run_id": b.run_id, "type": "markdown", "data": "x"}
            ).status_code
            == 403
        )
        assert (
            c.post(
                "/api/artifacts/",
                json={"key": "ｘ", "flow_run_id": a.run_id, "type": "markdown", "data": "x"},
            ).status_code
            == 403
        )
        moved = c.patch(f"/api/artifacts/{made.json()['id']}", json={"key": "audit-chain-broken"})
        assert moved.status_code in (403, 422)
    logs = world.prefect(
        "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [a.run_id, b.run_id]}}}
    ).json()
    assert sorted(entry["message"] for entry in logs if entry["message"].startswith("rt-")) == ["rt-own"]
    of_a = {"artifacts": {"flow_run_id": {"any_": [a.run_id]}}}
    keys = [x["key"] for x in world.prefect("POST", "/artifacts/filter", json=of_a).json()]
    assert keys and all(k is None or k.startswith(ns) for k in keys)
    reasons = world.refusals()
    assert "log line names no flow run" in reasons and "logs for another run" in reasons
    assert "artifact for another run" in reasons and "artifact key is not lower-case words" in reasons


def test_a_job_token_and_its_run_are_dead_once_the_job_is_over(world: World) -> None:
    """revoke_job_token (the job cancelled): the job token reaches nothing, and the run takes no more log
    lines, artifacts or events from the node; before, the same calls go through (last: the job stays over)."""
    a = world.a
    now = dt.datetime.now(dt.UTC).isoformat()
    line = [{"name": "rt", "level": 20, "message": "rt-late", "timestamp": now, "flow_run_id": a.run_id}]
    with world.gw(a, job=True) as c:
        assert c.get(f"/api/flow_runs/{a.run_id}").status_code == 200  # positive control
        world.coord.store.update_job(a.job_id, status="cancelled")  # what revoke_job_token does
        assert c.get(f"/api/flow_runs/{a.run_id}").status_code == 403
        assert (
            c.post(f"/api/flow_runs/{a.run_id}/set_state", json={"state": {"type": "COMPLETED"}}).status_code
            == 403
        )
        assert c.post("/api/logs/", json=line).status_code == 403
        artifact = {"key": "late", "flow_run_id": a.run_id, "type": "markdown", "data": "x"}
        assert c.post("/api/artifacts/", json=artifact).status_code == 403
    with httpx.Client(base_url=world.coord.url, verify=world.ctx(a.name), timeout=30) as coord:
        grant = {"kind": "output", "name": "model.bin", "method": "PUT", "size": 1, "sha256": "0" * 64}
        urls = coord.post(
            f"/v1/jobs/{a.job_id}/urls", json=grant, headers={"authorization": f"Bearer {a.job_token}"}
        )
        assert urls.status_code in (401, 403)
    ws = world.ws(a, "/api/events/in")
    ws.send(_event(f"rt{TAG}.late", a.run_id))
    _until(
        lambda: "job is over: job is cancelled" in world.refusals("events_in.event"), "late event refused", 10
    )
    ws.close()
    reasons = world.refusals()
    assert "job token is dead: job is cancelled" in reasons
    assert "job is over: job is cancelled" in reasons
    logs = world.prefect("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [a.run_id]}}}).json()
    assert "rt-late" not in [entry["message"] for entry in logs]
