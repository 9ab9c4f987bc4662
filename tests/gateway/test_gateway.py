"""Gateway attack tests (SPEC C3, B5, D1, I, H2): a node reaches only its own queue and flow runs."""

from __future__ import annotations

import base64
import json
import ssl
import uuid

import pytest
from websockets.sync.client import connect as ws_connect

from cyxwiz.transport.tls import client_context
from tests.gateway.conftest import POOL, GwEnv


def test_no_certificate_refused_at_handshake(gw: GwEnv) -> None:
    import httpx

    with pytest.raises(httpx.TransportError), gw.client(None) as c:
        c.get("/api/admin/version")


def test_token_required_and_bound_to_the_certificate(gw: GwEnv) -> None:
    with gw.client("node-a") as c:
        assert c.get("/api/admin/version").status_code == 401
    with gw.client("node-b", gw.token("node-a")) as c:  # A's token over B's certificate
        r = c.get("/api/admin/version")
        assert r.status_code == 401 and r.json()["type"].endswith("token-binding")
    user = gw.issuer.session(user_id="alice").token
    with gw.client("node-a", user) as c:
        assert c.get("/api/admin/version").status_code == 403
    with gw.client("node-a", gw.token("node-a")) as c:
        assert c.get("/api/admin/version").status_code == 200


def test_basic_auth_string_carries_the_token(gw: GwEnv) -> None:
    """PREFECT_API_AUTH_STRING="node:<jwt>" makes Prefect send Basic auth: accepted the same way."""
    basic = base64.b64encode(f"node:{gw.token('node-a')}".encode()).decode()
    ctx = client_context(
        trust_bundle=gw.pki.bundle, cert=gw.pki.node_cert("node-a"), key=gw.pki.node_key("node-a")
    )
    import httpx

    with httpx.Client(base_url=gw.url, verify=ctx, headers={"authorization": f"Basic {basic}"}) as c:
        assert c.get("/api/admin/version").status_code == 200


def test_polling_sees_only_own_queue(gw: GwEnv) -> None:
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    with gw.client("node-a", gw.token("node-a"), gw.job_token("node-a", "job-node-a")) as c:
        r = c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={"work_queue_names": ["node-b"]})
        assert r.status_code == 200
        assert [i["flow_run"]["id"] for i in r.json()] == [mine["id"]]
        assert gw.upstream.seen_queue_names[-1] == ["node-a"]
        queues = c.post(f"/api/work_pools/{POOL}/queues/filter", json={}).json()
        assert queues == [{"name": "node-a"}]
        assert c.get(f"/api/flow_runs/{mine['id']}").status_code == 200
        r = c.get(f"/api/flow_runs/{theirs['id']}")
        assert r.status_code == 403
        assert c.post(f"/api/flow_runs/{theirs['id']}/set_state", json={}).status_code == 403
        assert c.get(f"/api/deployments/{mine['deployment_id']}").status_code == 200
        assert c.get(f"/api/deployments/{theirs['deployment_id']}").status_code == 403
    assert "flow run of another node" in gw.denials()


def test_other_pool_and_unlisted_routes_refused(gw: GwEnv) -> None:
    with gw.client("node-a", gw.token("node-a")) as c:
        assert c.get("/api/work_pools/other-pool").status_code == 403
        r = c.post("/api/deployments/filter", json={})
        assert r.status_code == 403 and r.json()["rule"] == "C3"
        assert c.delete(f"/api/work_pools/{POOL}").status_code == 403
    assert any("allow-list" in d for d in gw.denials())


def test_listing_runs_is_narrowed_to_own_queue(gw: GwEnv) -> None:
    """The cancellation observer lists its in-flight runs: asked for another node's, it gets only its own."""
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    both = {"any_": [mine["id"], theirs["id"]]}
    asked = {"flow_runs": {"id": both, "work_queue_name": {"any_": ["node-b"]}}}
    with gw.client("node-a", gw.token("node-a")) as c:
        r = c.post("/api/flow_runs/filter", json=asked)
        assert r.status_code == 200
        assert [run["id"] for run in r.json()] == [mine["id"]]  # upstream over-answered; the gateway did not
        assert c.post("/api/flow_runs/filter", content=b"[1]").status_code == 422
    sent = gw.upstream.seen_run_filters[0]
    assert sent["flow_runs"]["work_queue_name"] == {"any_": ["node-a"]}
    assert sent["flow_runs"]["id"] == both
    assert sent["work_pools"] == {"name": {"any_": [POOL]}}


def test_cannot_move_own_run_to_another_queue(gw: GwEnv) -> None:
    mine = gw.upstream.add_run("node-a")
    with gw.client("node-a", gw.token("node-a"), gw.job_token("node-a", "job-node-a")) as c:
        r = c.patch(f"/api/flow_runs/{mine['id']}", json={"work_queue_name": "node-b"})
        assert r.status_code == 403
        assert c.patch(f"/api/flow_runs/{mine['id']}", json={"infrastructure_pid": "1"}).status_code == 200
        # Nor rewrite whose job it is (the job id the job-token rule reads) or its job variables (issue 18).
        for change in ({"parameters": {}}, {"tags": []}, {"job_variables": {"env": {}}}, {"state": {}}):
            assert c.patch(f"/api/flow_runs/{mine['id']}", json=change).status_code == 403, change
        policy = {"name": "run-7", "flow_version": "1", "empirical_policy": {"retries": 0}}
        assert c.patch(f"/api/flow_runs/{mine['id']}", json=policy).status_code == 200  # what the engine sets
    assert gw.upstream.runs[mine["id"]]["work_queue_name"] == "node-a"
    assert gw.upstream.runs[mine["id"]]["parameters"] == {"job_id": "job-node-a"}


def test_job_run_call_needs_that_jobs_token(gw: GwEnv) -> None:
    """B1/C3: a session token alone (stolen, or a node that lost the job) cannot read or steer a job's run."""
    mine = gw.upstream.add_run("node-a")
    run = f"/api/flow_runs/{mine['id']}"
    with gw.client("node-a", gw.token("node-a")) as c:
        r = c.get(run)
        assert r.status_code == 401 and r.json()["field"] == "x-cyxwiz-job-token"
        assert c.post(f"{run}/set_state", json={}).status_code == 401
    assert any("needs that job's token" in d for d in gw.denials())


def test_job_token_of_another_job_or_node_refused(gw: GwEnv) -> None:
    mine = gw.upstream.add_run("node-a")
    run = f"/api/flow_runs/{mine['id']}"
    with gw.client("node-a", gw.token("node-a"), gw.job_token("node-a", "job-other")) as c:
        r = c.post(f"{run}/set_state", json={})
        assert r.status_code == 403 and r.json()["rule"] == "C3"
    assert "job token is for another job" in gw.denials()
    # Node B's job token, bound to B's certificate, presented over A's connection.
    stolen = gw.job_token("node-b", "job-node-a")
    with gw.client("node-a", gw.token("node-a"), stolen) as c:
        r = c.get(run)
        assert r.status_code == 401 and r.json()["type"].endswith("token-binding")
    # A session token where the job token belongs: wrong kind.
    with gw.client("node-a", gw.token("node-a"), gw.token("node-a")) as c:
        assert c.get(run).status_code == 401
    with gw.client("node-a", gw.token("node-a"), gw.job_token("node-a", "job-node-a")) as c:
        assert c.get(run).status_code == 200
    allowed = [e for e in gw.audit.events if e.action == "job-token" and e.outcome.value == "success"]
    assert allowed and allowed[-1].resource == f"flow_run:{mine['id']}"


def test_run_without_a_job_needs_no_job_token(gw: GwEnv) -> None:
    """A node's health-check run carries no job: ownership is checked, no job token exists to ask for."""
    check = gw.upstream.add_run("node-a", job=False)
    with gw.client("node-a", gw.token("node-a")) as c:
        assert c.get(f"/api/flow_runs/{check['id']}").status_code == 200
    with gw.client("node-b", gw.token("node-b")) as c:
        assert c.get(f"/api/flow_runs/{check['id']}").status_code == 403


def test_logs_only_for_own_runs(gw: GwEnv) -> None:
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    with gw.client("node-a", gw.token("node-a")) as c:
        assert c.post("/api/logs/", json=[{"flow_run_id": mine["id"], "message": "hi"}]).status_code == 200
        r = c.post("/api/logs/", json=[{"flow_run_id": theirs["id"], "message": "forged"}])
        assert r.status_code == 403
        assert c.post("/api/logs/", content=b"{oops").status_code == 422
    assert [line["message"] for line in gw.upstream.logs] == ["hi"]


def test_oversize_body_refused(gw: GwEnv) -> None:
    with gw.client("node-a", gw.token("node-a")) as c:
        r = c.post("/api/logs/", content=b"[" + b" " * (9 << 20) + b"]")
    assert r.status_code == 413


def _node_a_websocket(gw: GwEnv, path: str) -> tuple[str, ssl.SSLContext, dict[str, str]]:
    """node-a polls first (so the gateway learns its runs), then gets what a websocket to ``path`` needs."""
    with gw.client("node-a", gw.token("node-a")) as c:
        c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})
    ctx = client_context(
        trust_bundle=gw.pki.bundle, cert=gw.pki.node_cert("node-a"), key=gw.pki.node_key("node-a")
    )
    url = gw.url.replace("https", "wss") + path
    return url, ctx, {"authorization": f"Bearer {gw.token('node-a')}"}


def test_events_out_narrowed_to_own_runs(gw: GwEnv) -> None:
    mine, _theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    url, ctx, headers = _node_a_websocket(gw, "/api/events/out")
    with ws_connect(url, ssl=ctx, additional_headers=headers, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": "node-secret"}))
        assert json.loads(ws.recv(timeout=5))["seen_token"] == "gateway:upstream-secret"
        ws.send(json.dumps({"type": "filter", "filter": {"any_resource": {"id_prefix": ["prefect"]}}}))
        seen = json.loads(ws.recv(timeout=5))
        assert seen["filter"]["filter"]["any_resource"] == {"id_prefix": ["prefect.flow-run."]}
        events = []
        while (msg := json.loads(ws.recv(timeout=5)))["type"] != "done":
            events.append(msg["event"]["resource"]["prefect.resource.id"])
        assert events == [f"prefect.flow-run.{mine['id']}"]


def test_events_in_only_about_own_runs_and_worker(gw: GwEnv) -> None:
    """C3/I: Prefect automations act on events; a node cannot emit events about another node's work."""
    mine, theirs = gw.upstream.add_run("node-a"), gw.upstream.add_run("node-b")
    url, ctx, headers = _node_a_websocket(gw, "/api/events/in")

    def event(name: str, resource: str, related: list[str] | None = None) -> str:
        rel = [{"prefect.resource.id": r, "prefect.resource.role": "flow-run"} for r in related or []]
        return json.dumps({"event": name, "resource": {"prefect.resource.id": resource}, "related": rel})

    with ws_connect(url, ssl=ctx, additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "auth", "token": "node-secret"}))  # what Prefect's client sends first
        ws.send(event("own.run", f"prefect.flow-run.{mine['id']}"))
        ws.send(event("own.task", f"prefect.task-run.{uuid.uuid4()}", [f"prefect.flow-run.{mine['id']}"]))
        ws.send(event("own.worker", "prefect.worker.cyxwiz-sandbox.cyxwiz-node-a"))
        ws.send(event("forged.run", f"prefect.flow-run.{theirs['id']}"))
        ws.send(
            event("forged.task", f"prefect.task-run.{uuid.uuid4()}", [f"prefect.flow-run.{theirs['id']}"])
        )
        ws.send(event("forged.worker", "prefect.worker.cyxwiz-sandbox.cyxwiz-node-b"))
        ws.send("not json")
        ws.send(event("test.end", f"prefect.flow-run.{mine['id']}"))
        assert ws.recv(timeout=5) == "bye"
    assert gw.upstream.emitted[0] == {"auth": "gateway:upstream-secret"}  # the node's secret stays here
    assert [e["event"] for e in gw.upstream.emitted[1:]] == ["own.run", "own.task", "own.worker", "test.end"]
    dropped = [e for e in gw.audit.events if e.action == "events_in.event"]
    assert len(dropped) == 4 and all(e.outcome.value != "success" for e in dropped)
    assert {str(e.details["reason"]).partition(" (")[0] for e in dropped} == {
        "event about a resource that is not the node's",
        "not an event",
    }


def test_websocket_without_token_refused(gw: GwEnv) -> None:
    """No Authorization header: the first message must be Prefect's ``auth`` with a valid node token."""
    ctx = client_context(
        trust_bundle=gw.pki.bundle, cert=gw.pki.node_cert("node-a"), key=gw.pki.node_key("node-a")
    )
    url = gw.url.replace("https", "wss") + "/api/events/out"
    from websockets.exceptions import ConnectionClosed

    with ws_connect(url, ssl=ctx) as ws:
        ws.send(json.dumps({"type": "filter", "filter": {}}))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4401
    assert any("session token is required" in d for d in gw.denials())


def test_websocket_auth_message_with_another_nodes_token_refused(gw: GwEnv) -> None:
    """A token bound to node-b's certificate, sent in the auth message over node-a's connection (B2)."""
    ctx = client_context(
        trust_bundle=gw.pki.bundle, cert=gw.pki.node_cert("node-a"), key=gw.pki.node_key("node-a")
    )
    url = gw.url.replace("https", "wss") + "/api/events/out"
    from websockets.exceptions import ConnectionClosed

    with ws_connect(url, ssl=ctx) as ws:
        ws.send(json.dumps({"type": "auth", "token": f"node:{gw.token('node-b')}"}))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4401


def test_node_flood_throttled(gw: GwEnv) -> None:
    from cyxwiz.coordinator.limits import RateLimiter

    gw.gateway.limiter = RateLimiter(rate=0.5, burst=5)
    with gw.client("node-a", gw.token("node-a")) as c:
        codes = [c.get("/api/admin/version").status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[-1] == 429
    assert any("429 rate-limited" in d for d in gw.denials())
    with gw.client("node-b", gw.token("node-b")) as c:
        assert c.get("/api/admin/version").status_code == 200
