"""A node lost mid-job writes nothing for it through the gateway once it is re-dispatched (issue 21; C3).

A real coordinator and a real gateway over mTLS sharing the coordinator's records, in front of a loopback
upstream that answers like the Prefect API (tests/gateway). Node A ran job J's flow run; J is then
re-dispatched to node B. A still holds its session, its old run and J's old job token: its log lines, the
run's state, an artifact and an event about the run are each refused (403 / dropped, Authorization audit
event saying the job was re-assigned) and reach nothing upstream; B's same calls for its own run go through.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from websockets.sync.client import connect as ws_connect

from tests.gateway.conftest import POOL
from tests.gateway.test_revocation import Both, both  # noqa: F401  (the fixture)

MOVED = "re-assigned to another node"


def _job_token(world: Both, node: dict[str, Any], job_id: str, name: str) -> str:
    with httpx.Client(base_url=world.coord.url, verify=world.ctx(name), timeout=10) as c:  # type: ignore[arg-type]
        r = c.get(f"/v1/jobs/{job_id}/token", headers={"authorization": f"Bearer {node['session_token']}"})
        assert r.status_code == 200, r.text
        return str(r.json()["job_token"])


def _event(run_id: str, name: str) -> str:
    return json.dumps(
        {"event": name, "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"}, "related": []}
    )


def _emit(world: Both, name: str, token: str, run_id: str, event: str) -> None:
    url = world.gateway.url.replace("https", "wss") + "/api/events/in"
    headers = {"authorization": f"Bearer {token}"}
    with ws_connect(url, ssl=world.ctx(name), additional_headers=headers) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({"type": "auth", "token": "x"}))
        ws.send(_event(run_id, event))
        ws.send(_event(run_id, "test.end"))  # refused too for A: the upstream's "bye" never comes then
        if name == "node-b":
            assert ws.recv(timeout=5) == "bye"
            return
        # A's frames are dropped, not answered: wait (bounded) until the gateway has judged both.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_refused(world, "events_in.event")) < 2:
            time.sleep(0.05)


def _refused(world: Both, action: str) -> list[str]:
    return [
        str(e.details.get("reason"))
        for e in world.audit.events
        if e.action == action and e.outcome.value != "success"
    ]


def _calls(world: Both, name: str, token: str, job_token: str, run_id: str) -> dict[str, int]:
    """The node's writes for its run: log lines, the run's state, an artifact."""
    with world.gw(name, token) as c:
        c.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})  # the worker picks its runs
        return {
            "logs": c.post("/api/logs/", json=[{"flow_run_id": run_id, "message": "step 9"}]).status_code,
            "state": c.post(
                f"/api/flow_runs/{run_id}/set_state",
                json={"state": {"type": "COMPLETED"}},
                headers={"x-cyxwiz-job-token": job_token},
            ).status_code,
            "artifact": c.post(
                "/api/artifacts/", json={"flow_run_id": run_id, "key": "progress", "type": "markdown"}
            ).status_code,
        }


def test_the_lost_node_writes_nothing_for_a_job_now_held_by_another(both: Both) -> None:  # noqa: F811
    world = both
    a, b = world.register("node-a"), world.register("node-b")
    job = world.coord.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=600)
    world.coord.store.claim_job(job.job_id, candidates=[a["node_id"]])
    run_a = world.upstream.add_run(a["node_id"])
    run_a["parameters"] = {"job_id": job.job_id}
    token_a = _job_token(world, a, job.job_id, "node-a")
    # Positive control: while A holds the job, its writes for its run go through.
    assert set(_calls(world, "node-a", a["session_token"], token_a, run_a["id"]).values()) <= {200, 201}

    with world.gw("node-a", a["session_token"]) as c:
        made = c.post("/api/artifacts/", json={"flow_run_id": run_a["id"], "key": "curve", "type": "table"})
        assert made.status_code in (200, 201)
        artifact_a = made.json()["id"]

    world.coord.store.claim_job(job.job_id, candidates=[b["node_id"]], exclude=[a["node_id"]])
    run_b = world.upstream.add_run(b["node_id"])
    run_b["parameters"] = {"job_id": job.job_id}
    token_b = _job_token(world, b, job.job_id, "node-b")
    logs, artifacts = len(world.upstream.logs), len(world.upstream.artifacts)

    # Attack: A's writes for its old run of J, with its old job token.
    assert _calls(world, "node-a", a["session_token"], token_a, run_a["id"]) == dict.fromkeys(
        ("logs", "state", "artifact"), 403
    )
    with world.gw("node-a", a["session_token"]) as c:  # its artifact of the run, updated afterwards
        assert c.patch(f"/api/artifacts/{artifact_a}", json={"data": "forged"}).status_code == 403
    emitted = len(world.upstream.emitted)
    _emit(world, "node-a", a["session_token"], run_a["id"], "prefect.flow-run.Completed")
    assert [e for e in world.upstream.emitted[emitted:] if "event" in e] == []
    assert len(world.upstream.logs) == logs and len(world.upstream.artifacts) == artifacts
    refused = [
        (e.action, str(e.details.get("reason")))
        for e in world.audit.events
        if e.outcome.value != "success"
        and e.actor_id == a["node_id"]
        and e.event_type.value == "Authorization"
    ]
    actions = {action for action, reason in refused if MOVED in reason}
    assert {"logs", "flow_run", "artifact_create", "artifact", "events_in.event"} <= actions, refused

    # Positive control: B's same writes for its own run of J.
    assert set(_calls(world, "node-b", b["session_token"], token_b, run_b["id"]).values()) <= {200, 201}
    _emit(world, "node-b", b["session_token"], run_b["id"], "prefect.flow-run.Running")
    assert len(world.upstream.logs) == logs + 1 and len(world.upstream.artifacts) == artifacts + 1
    assert any(e.get("event") == "prefect.flow-run.Running" for e in world.upstream.emitted)
