"""Every channel as tight as HTTP (issue 18; SPEC C3, I, H2): events/in and events/out over *all* the
resources an event names, the worker channel's frames, logs, artifacts, identifiers, headers, bodies and
websocket floods. Each attack has a positive control beside it and asserts the refusal and its audit event.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from cyxwiz.coordinator.limits import RateLimiter
from cyxwiz.gateway.model import artifact_namespace
from cyxwiz.transport.tls import client_context
from tests.gateway.conftest import POOL, GwEnv
from tests.gateway.test_gateway import _node_a_websocket


def _event(name: str, resource: str, related: list[str] | None = None) -> str:
    rel = [{"prefect.resource.id": r, "prefect.resource.role": r.split(".")[1]} for r in related or []]
    return json.dumps({"event": name, "resource": {"prefect.resource.id": resource}, "related": rel})


def _denied(gw: GwEnv, action: str) -> list[str]:
    return [
        str(e.details.get("reason"))
        for e in gw.audit.events
        if e.action == action and e.outcome.value != "success"
    ]


def _emit(gw: GwEnv, messages: list[str]) -> list[str]:
    """Send ``messages`` on events/in as node-a; the names of the events upstream received."""
    url, ctx, headers = _node_a_websocket(gw, "/api/events/in")
    with gw.client("node-a", gw.token("node-a")) as c:
        c.get(f"/api/work_pools/{POOL}")  # the gateway learns the pool's id as a worker does at start
    with ws_connect(url, ssl=ctx, additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "auth", "token": "x"}))
        for message in messages:
            ws.send(message)
        ws.send(_event("test.end", f"prefect.flow-run.{next(iter(gw.gateway.view('node-a').runs))}"))
        assert ws.recv(timeout=5) == "bye"
    return [e["event"] for e in gw.upstream.emitted[1:]]


def test_events_in_every_named_resource_must_be_the_nodes(gw: GwEnv) -> None:
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    own_run, their_run = f"prefect.flow-run.{mine['id']}", f"prefect.flow-run.{theirs['id']}"
    pool_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, POOL))
    sent = _emit(
        gw,
        [
            # positive controls: own run with its own deployment, flow, queue, pool and a tag
            _event(
                "own.full",
                own_run,
                [
                    f"prefect.deployment.{mine['deployment_id']}",
                    f"prefect.flow.{mine['flow_id']}",
                    f"prefect.work-queue.{mine['work_queue_id']}",
                    f"prefect.work-pool.{pool_id}",
                    "prefect.tag.train",
                ],
            ),
            _event("own.upper", f"prefect.flow-run.{mine['id'].upper()}"),  # same run, other spelling
            # attacks: one foreign resource among own ones refuses the whole event
            _event("forged.related-run", own_run, [their_run]),
            _event("forged.worker-about-run", "prefect.worker.cyxwiz-sandbox.cyxwiz-node-a", [their_run]),
            _event("forged.deployment", own_run, [f"prefect.deployment.{theirs['deployment_id']}"]),
            _event("forged.queue", own_run, [f"prefect.work-queue.{theirs['work_queue_id']}"]),
            _event("forged.pool", own_run, [f"prefect.work-pool.{uuid.uuid4()}"]),
            _event("forged.bad-id", f"prefect.flow-run.{mine['id']}x"),
            _event("forged.braced-id", f"prefect.flow-run.{{{mine['id']}}}"),
            _event("forged.unknown-kind", own_run, [f"prefect.block-document.{uuid.uuid4()}"]),
            _event("forged.only-a-tag", "prefect.tag.train"),
            _event("forged.orphan-task", f"prefect.task-run.{uuid.uuid4()}"),
        ],
    )
    assert sent == ["own.full", "own.upper", "test.end"]
    reasons = _denied(gw, "events_in.event")
    assert len(reasons) == 10
    assert {r.partition(" (")[0] for r in reasons} == {
        "event about a resource that is not the node's",
        "event names none of the node's runs or its worker",
    }
    assert "event about a resource that is not the node's (deployment)" in reasons


def test_events_out_hides_events_that_name_another_nodes_run(gw: GwEnv) -> None:
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    url, ctx, headers = _node_a_websocket(gw, "/api/events/out")
    # The upstream sends, per run, one event about it; add one about node-a's run naming node-b's run.
    gw.upstream.runs = {mine["id"]: mine, theirs["id"]: theirs}
    with ws_connect(url, ssl=ctx, additional_headers=headers, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": "x"}))
        ws.recv(timeout=5)
        ws.send(json.dumps({"type": "filter", "filter": {}}))
        ws.recv(timeout=5)
        events = []
        while (msg := json.loads(ws.recv(timeout=5)))["type"] != "done":
            events.append(msg["event"]["resource"]["prefect.resource.id"])
    assert events == [f"prefect.flow-run.{mine['id']}"]
    from cyxwiz.gateway.events import visible

    view = gw.gateway.view("node-a")
    mixed = {
        "type": "event",
        "event": json.loads(
            _event("x", f"prefect.flow-run.{mine['id']}", [f"prefect.flow-run.{theirs['id']}"])
        ),
    }
    assert not visible(json.dumps(mixed), view, queue="node-a", tasks=lambda _t: True)
    alone = {"type": "event", "event": json.loads(_event("x", f"prefect.flow-run.{mine['id']}"))}
    assert visible(json.dumps(alone), view, queue="node-a", tasks=lambda _t: True)


def _hello(**payload: Any) -> str:
    base = {
        "consumer_id": str(uuid.uuid4()),
        "worker_name": "cyxwiz-node-a",
        "worker_type": "cyxwiz-sandbox",
        "heartbeat_interval_seconds": 30,
        "supported_channel_versions": ["work_pool_worker_channel.v1"],
        "requested_capabilities": ["worker_heartbeat.v1", "work_pool_snapshot.v1"],
        "work_queue_names": ["node-a"],
    }
    return json.dumps({"type": "worker.hello.v1", "payload": {**base, **payload}})


def _worker_channel(gw: GwEnv, frames: list[str]) -> tuple[list[dict[str, Any]], int | None]:
    """Open the worker channel as node-a, send ``frames``; what came back, and the close code if closed."""
    url, ctx, headers = _node_a_websocket(gw, f"/api/work_pools/{POOL}/workers/connect")
    received: list[dict[str, Any]] = []
    with ws_connect(url, ssl=ctx, additional_headers=headers, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": "x"}))
        try:
            for frame in frames:
                ws.send(frame)
                if json.loads(frame).get("type") == "worker.hello.v1":
                    while (msg := json.loads(ws.recv(timeout=5)))["type"] != "done":
                        received.append(msg)
            ws.recv(timeout=2)
        except ConnectionClosed as closed:
            return received, closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            pass
    return received, None


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        ({"worker_name": "cyxwiz-node-b"}, "worker.hello names another worker"),
        ({"work_queue_names": []}, "worker.hello must name exactly the node's own work queue"),
        (
            {"work_queue_names": ["node-a", "node-b"]},
            "worker.hello must name exactly the node's own work queue",
        ),
    ],
)
def test_worker_hello_for_another_worker_or_queue_closes_the_channel(
    gw: GwEnv, hello: dict[str, Any], reason: str
) -> None:
    _received, code = _worker_channel(gw, [_hello(**hello)])
    assert code == 1008
    assert "worker.hello.v1" not in [f["type"] for f in gw.upstream.worker_frames]  # upstream never saw it
    assert _denied(gw, "worker_connect.message") == [reason]


def test_worker_channel_own_hello_heartbeat_and_cleanups(gw: GwEnv) -> None:
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    gw.upstream.cleanup_for = [mine["id"], theirs["id"]]
    heartbeat = json.dumps({"type": "worker.heartbeat.v1", "payload": {"worker_name": "cyxwiz-node-a"}})
    received, code = _worker_channel(gw, [_hello(), heartbeat])
    assert code is None
    # The cleanup message about node-b's run never reached node-a.
    cleanups = [f["payload"]["target"]["flow_run_id"] for f in received if f["type"] == "cleanup.message.v1"]
    assert cleanups == [mine["id"]]
    assert [f["type"] for f in gw.upstream.worker_frames] == [
        "auth",
        "worker.hello.v1",
        "worker.heartbeat.v1",
    ]
    own_message = str(uuid.uuid5(uuid.NAMESPACE_URL, mine["id"]))
    their_message = str(uuid.uuid5(uuid.NAMESPACE_URL, theirs["id"]))

    def ack(message: str) -> str:
        return json.dumps(
            {"type": "cleanup.ack.v1", "payload": {"message_id": message, "reservation_token": "t"}}
        )

    gw.upstream.worker_frames.clear()
    _received, code = _worker_channel(gw, [_hello(), ack(own_message)])
    assert code is None and [f["type"] for f in gw.upstream.worker_frames][-1] == "cleanup.ack.v1"
    _received, code = _worker_channel(gw, [_hello(), ack(their_message)])
    assert code == 1008
    forged_beat = json.dumps({"type": "worker.heartbeat.v1", "payload": {"worker_name": "cyxwiz-node-b"}})
    _received, code = _worker_channel(gw, [_hello(), forged_beat])
    assert code == 1008
    assert "heartbeat for another worker" in _denied(gw, "worker_connect.message")


def test_log_lines_must_each_name_an_own_run(gw: GwEnv) -> None:
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    with gw.client("node-a", gw.token("node-a")) as c:
        assert c.post("/api/logs/", json=[{"flow_run_id": mine["id"], "message": "ok"}]).status_code == 200
        upper = c.post("/api/logs/", json=[{"flow_run_id": mine["id"].upper(), "message": "upper"}])
        assert upper.status_code == 200
        for lines in (
            [{"message": "no run"}],
            [{"flow_run_id": None, "message": "null run"}],
            [{"flow_run_id": mine["id"], "message": "ok"}, {"message": "smuggled"}],
            [{"flow_run_id": mine["id"], "message": "ok"}, {"flow_run_id": theirs["id"], "message": "x"}],
            [{"flow_run_id": f"{{{mine['id']}}}", "message": "braced"}],
        ):
            assert c.post("/api/logs/", json=lines).status_code in (403, 422), lines
    assert [line["message"] for line in gw.upstream.logs] == ["ok", "upper"]
    assert "log line names no flow run" in gw.denials()


def test_artifacts_live_in_the_nodes_namespace(gw: GwEnv) -> None:
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    namespace = artifact_namespace("node-a")
    with gw.client("node-a", gw.token("node-a")) as c:
        for key in ("verification-job-1", "audit-chain-broken", "training-job-1"):
            r = c.post("/api/artifacts/", json={"key": key, "flow_run_id": mine["id"], "type": "markdown"})
            assert r.status_code == 200
        assert c.post("/api/artifacts/", json={"key": "x", "flow_run_id": theirs["id"]}).status_code == 403
        assert (
            c.post("/api/artifacts/", json={"key": "Bad_Key", "flow_run_id": mine["id"]}).status_code == 403
        )
        created = c.post("/api/artifacts/", json={"flow_run_id": mine["id"], "type": "progress"}).json()
        moved = c.patch(f"/api/artifacts/{created['id']}", json={"key": "verification-job-1"})
        assert moved.status_code == 403
        assert c.patch(f"/api/artifacts/{created['id']}", json={"data": 50}).status_code == 200
    keys = [a.get("key") for a in gw.upstream.artifacts if "patch" not in a]
    assert keys == [
        f"{namespace}-verification-job-1",
        f"{namespace}-audit-chain-broken",
        f"{namespace}-training-job-1",
        None,
    ]
    assert artifact_namespace("node-a") != artifact_namespace("node-b")


def test_identifiers_are_canonical_before_any_decision(gw: GwEnv) -> None:
    """An upper-case spelling of a job's run id must still need the job token (it named the same run)."""
    mine = gw.upstream.add_run("node-a")
    with gw.client("node-a", gw.token("node-a")) as c:
        c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})  # the run is known, as polled
        r = c.get(f"/api/flow_runs/{mine['id'].upper()}")
        assert r.status_code == 401 and r.json()["field"] == "x-cyxwiz-job-token"
        bad = mine["id"].replace("-", "_")
        assert c.get(f"/api/flow_runs/{bad}").status_code in (403, 422)
    with gw.client("node-a", gw.token("node-a"), gw.job_token("node-a", "job-node-a")) as c:
        assert c.get(f"/api/flow_runs/{mine['id'].upper()}").status_code == 200


def test_only_allow_listed_headers_go_upstream_and_no_body_on_get(gw: GwEnv) -> None:
    evil = {
        "x-http-method-override": "DELETE",
        "x-forwarded-for": "10.0.0.1",
        "x-forwarded-host": "evil",
        "forwarded": "for=10.0.0.1",
        "x-original-url": "/api/admin/settings",
        "x-prefect-api-version": "0.8.4",
        "user-agent": "prefect/3",
    }
    with gw.client("node-a", gw.token("node-a")) as c:
        assert c.get("/api/admin/version", headers=evil).status_code == 200
        r = c.request("GET", "/api/admin/version", content=b'{"x": 1}')
        assert r.status_code == 422 and r.json()["field"] == "body"
    [seen] = gw.upstream.headers
    assert not {k for k in seen if k.startswith(("x-forwarded", "x-http", "x-original", "forwarded"))}
    assert seen["x-prefect-api-version"] == "0.8.4" and seen["user-agent"] == "prefect/3"
    assert "x-cyxwiz-job-token" not in seen and seen["authorization"].startswith("Basic ")


def test_run_listing_hides_job_parameters(gw: GwEnv) -> None:
    """A listing is read with the session token only: a job's parameters need its job token."""
    mine = gw.upstream.add_run("node-a")
    with gw.client("node-a", gw.token("node-a")) as c:
        [run] = c.post("/api/flow_runs/filter", json={}).json()
    assert run["id"] == mine["id"] and run["parameters"] == {}


def test_websocket_messages_are_rate_limited_per_node(gw: GwEnv) -> None:
    mine = gw.upstream.add_run("node-a")
    gw.gateway.ws_limiter = RateLimiter(rate=0.1, burst=4)  # the auth message and three events
    url, ctx, headers = _node_a_websocket(gw, "/api/events/in")
    with ws_connect(url, ssl=ctx, additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "auth", "token": "x"}))
        for i in range(10):
            ws.send(_event(f"flood.{i}", f"prefect.flow-run.{mine['id']}"))
        time.sleep(0.5)
    assert [e["event"] for e in gw.upstream.emitted[1:]] == ["flood.0", "flood.1", "flood.2"]
    assert any("too many requests" in r for r in _denied(gw, "events_in.event"))


def test_http_worker_heartbeat_only_as_the_nodes_own_worker(gw: GwEnv) -> None:
    with gw.client("node-a", gw.token("node-a")) as c:
        ok = c.post(f"/api/work_pools/{POOL}/workers/heartbeat", json={"name": "cyxwiz-node-a"})
        assert ok.status_code in (200, 204)
        r = c.post(f"/api/work_pools/{POOL}/workers/heartbeat", json={"name": "cyxwiz-node-b"})
        assert r.status_code == 403
        assert c.post(f"/api/work_pools/{POOL}/workers/heartbeat", json={}).status_code == 403
    assert [f["name"] for f in gw.upstream.worker_frames] == ["cyxwiz-node-a"]
    assert "heartbeat for another worker" in gw.denials()


def test_artifact_events_only_for_artifacts_the_node_created(gw: GwEnv) -> None:
    """Prefect's client announces each artifact it creates (``prefect.artifact.created``): allowed for the
    node's own artifacts, refused for any other."""
    mine = gw.upstream.add_run("node-a")
    with gw.client("node-a", gw.token("node-a")) as c:
        c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})
        created = c.post("/api/artifacts/", json={"key": "training-1", "flow_run_id": mine["id"]}).json()
    own_run = f"prefect.flow-run.{mine['id']}"
    sent = _emit(
        gw,
        [
            _event("prefect.artifact.created", f"prefect.artifact.{created['id']}", [own_run]),
            _event("forged.artifact", f"prefect.artifact.{uuid.uuid4()}", [own_run]),
        ],
    )
    assert sent == ["prefect.artifact.created", "test.end"]
    assert "event about a resource that is not the node's (artifact)" in _denied(gw, "events_in.event")


def test_a_task_run_is_the_node_that_first_named_it(gw: GwEnv) -> None:
    """Task runs are created by events (there is no task_runs POST), with a client-chosen id: the node
    whose own flow run's event first names one owns it; another node naming that id — in an event, a log
    line or an artifact — is refused and audited (issue 18; C3)."""
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    task = str(uuid.uuid4())
    own_run, their_run = f"prefect.flow-run.{mine['id']}", f"prefect.flow-run.{theirs['id']}"
    # node-a's engine announces its task run (positive control: claimed, forwarded).
    sent = _emit(gw, [_event("prefect.task-run.Pending", f"prefect.task-run.{task}", [own_run])])
    assert sent == ["prefect.task-run.Pending", "test.end"]
    for node in ("node-a", "node-b"):
        with gw.client(node, gw.token(node)) as c:
            c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})  # learns its runs
    run_b = theirs["id"]
    with gw.client("node-b", gw.token("node-b")) as c:
        stolen = {"flow_run_id": run_b, "task_run_id": task, "message": "into a's task run"}
        assert c.post("/api/logs/", json=[stolen]).status_code == 403
        upper = {**stolen, "task_run_id": task.upper()}
        assert c.post("/api/logs/", json=[upper]).status_code == 403  # same task run, other spelling
        artifact = {"flow_run_id": run_b, "task_run_id": task, "type": "markdown", "key": "x"}
        assert c.post("/api/artifacts/", json=artifact).status_code == 403
        own_task = {"flow_run_id": run_b, "task_run_id": str(uuid.uuid4()), "message": "b's own"}
        assert c.post("/api/logs/", json=[own_task]).status_code == 200  # positive control
    with gw.client("node-a", gw.token("node-a")) as c:
        line = {"flow_run_id": mine["id"], "task_run_id": task, "message": "a's task"}
        assert c.post("/api/logs/", json=[line]).status_code == 200  # positive control
    assert [line["message"] for line in gw.upstream.logs] == ["b's own", "a's task"]
    assert sum("names another node's task run" in r for r in gw.denials()) == 3
    # node-b's events about a's task run, even next to b's own run, are dropped on events/in.
    before = len(gw.upstream.emitted)
    url = gw.url.replace("https", "wss") + "/api/events/in"
    ctx = client_context(
        trust_bundle=gw.pki.bundle, cert=gw.pki.node_cert("node-b"), key=gw.pki.node_key("node-b")
    )
    with ws_connect(url, ssl=ctx, additional_headers={"authorization": f"Bearer {gw.token('node-b')}"}) as ws:
        ws.send(json.dumps({"type": "auth", "token": "x"}))
        ws.send(_event("prefect.task-run.Completed", f"prefect.task-run.{task}", [their_run]))
        ws.send(_event("test.end", their_run))
        assert ws.recv(timeout=5) == "bye"
    assert [e.get("event") for e in gw.upstream.emitted[before:]][1:] == ["test.end"]
    assert "event about a resource that is not the node's (task-run)" in _denied(gw, "events_in.event")


def test_message_authenticated_websocket_to_another_pool_is_closed_and_audited(gw: GwEnv) -> None:
    """The worker channel authenticates by its first message (no header): a channel to another pool is
    still refused — closed 1008, audited, nothing opened upstream — and the own pool's opens (control)."""
    ctx = client_context(
        trust_bundle=gw.pki.bundle, cert=gw.pki.node_cert("node-a"), key=gw.pki.node_key("node-a")
    )
    auth = json.dumps({"type": "auth", "token": f"node:{gw.token('node-a')}"})
    base = gw.url.replace("https", "wss") + "/api/work_pools"
    with ws_connect(f"{base}/{POOL}/workers/connect", ssl=ctx, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(auth)
        ws.send(_hello())
        assert json.loads(ws.recv(timeout=5))["type"] == "worker.ready.v1"  # positive control
    before = len(gw.upstream.worker_frames)
    with ws_connect(f"{base}/control/workers/connect", ssl=ctx, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(auth)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert len(gw.upstream.worker_frames) == before
    assert "work pool 'control' is not the node pool" in gw.denials()


def test_task_run_lookups_are_bounded_per_event_and_per_log_batch(gw: GwEnv) -> None:
    """A task run the gateway has not seen is attributed by asking the Prefect API: one event or log
    batch naming a flood of them would turn into a flood of lookups, so it is refused (SPEC I)."""
    mine = gw.upstream.add_run("node-a")
    own_run = f"prefect.flow-run.{mine['id']}"
    tasks = [f"prefect.task-run.{uuid.uuid4()}" for _ in range(9)]
    event = json.loads(_event("prefect.task-run.Pending", tasks[0], [own_run, *tasks[1:]]))
    sent = _emit(gw, [json.dumps(event)])
    assert sent == ["test.end"]
    assert "event names more than 8 task runs" in _denied(gw, "events_in.event")
    with gw.client("node-a", gw.token("node-a")) as c:
        line = {"flow_run_id": mine["id"], "message": "m"}
        flood = [{**line, "task_run_id": str(uuid.uuid4())} for _ in range(257)]
        assert c.post("/api/logs/", json=flood).status_code == 403
        fine = [{**line, "task_run_id": str(uuid.uuid4())} for _ in range(2)]
        assert c.post("/api/logs/", json=fine).status_code == 200  # positive control
    assert "log batch names too many new task runs" in gw.denials()
    assert len(gw.upstream.logs) == 2
