"""A real node agent's Prefect traffic goes through the mTLS gateway and sees only its own queue (issue 8).

Two agents (node-1, node-2) run as separate processes behind their loopback tunnels. A run queued for
node-2 is never taken by node-1; node-1, calling the gateway itself with its own certificate and session
token, cannot list, read or poll node-2's runs, and routes off the allow-list are refused (SPEC C3, D1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cyxwiz.transport.tls import client_context
from infra.stack import EmbeddedStack, embedded_stack, prefect_cli

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    home = tmp_path_factory.mktemp("gateway-path")
    with embedded_stack(home, say=lambda _m: None, nodes=("node-1", "node-2")) as built:
        prefect_cli("--no-prompt", "deploy", "--name", "node-healthcheck", env=built.env)
        built.start_agent("node-1")
        built.wait_for_node("node-1")
        yield built


def _node_client(stack: EmbeddedStack, name: str) -> httpx.Client:
    session = json.loads((stack.home / "agents" / name / "session.json").read_text())
    ctx = client_context(
        trust_bundle=stack.pki.bundle, cert=stack.pki.node_cert(name), key=stack.pki.node_key(name)
    )
    return httpx.Client(
        base_url=stack.env["CYXWIZ_GATEWAY_URL"],
        verify=ctx,
        headers={"authorization": f"Bearer {session['session_token']}"},
        timeout=30,
    )


def _node_id(stack: EmbeddedStack, name: str) -> str:
    """The node's id, which is its work queue (never its CN): registering is idempotent per certificate."""
    stack.pki_for(name)
    ctx = client_context(
        trust_bundle=stack.pki.bundle, cert=stack.pki.node_cert(name), key=stack.pki.node_key(name)
    )
    with httpx.Client(base_url=stack.coordinator.url, verify=ctx, timeout=30) as c:
        r = c.post("/v1/nodes/register", json={"hardware": {}})
        r.raise_for_status()
        return str(r.json()["node_id"])


def _run_state(run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    return run.state.type.value if run.state else "UNKNOWN"


def test_own_queue_only_through_the_gateway(stack: EmbeddedStack) -> None:
    from prefect.deployments import run_deployment

    # node-1's own run: picked up through tunnel → gateway → Prefect, and completes.
    mine = run_deployment(
        "node-healthcheck/node-healthcheck", work_queue_name=_node_id(stack, "node-1"), timeout=240
    )
    assert mine.state is not None
    assert mine.state.is_completed(), mine.state

    # A run for node-2 while only node-1's agent is up: node-1 never takes it.
    node_2 = _node_id(stack, "node-2")
    theirs = run_deployment("node-healthcheck/node-healthcheck", work_queue_name=node_2, timeout=0)
    time.sleep(12)
    assert _run_state(theirs.id) == "SCHEDULED"

    with _node_client(stack, "node-1") as gw:
        # Polling for node-2's queue is narrowed to node-1's own: node-2's run is not in the answer.
        polled = gw.post("/api/work_pools/gpu/get_scheduled_flow_runs", json={"work_queue_names": [node_2]})
        assert polled.status_code == 200
        assert str(theirs.id) not in polled.text
        # Reading node-2's run by id is refused and audited.
        assert gw.get(f"/api/flow_runs/{theirs.id}").status_code == 403
        # Listing runs (the cancellation observer's fallback) answers only node-1's own.
        listed = gw.post("/api/flow_runs/filter", json={})
        assert listed.status_code == 200
        assert str(mine.id) in listed.text and str(theirs.id) not in listed.text
        # Routes off the allow-list are refused: deployments, blocks (secrets!).
        assert gw.post("/api/deployments/filter", json={}).status_code == 403
        assert gw.post("/api/block_documents/filter", json={}).status_code == 403
        # Another work pool is refused even on an allow-listed route.
        assert gw.get("/api/work_pools/control").status_code == 403

    # node-2's agent comes up and takes its run.
    stack.start_agent("node-2")
    stack.wait_for_node("node-2")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and _run_state(theirs.id) not in ("COMPLETED", "FAILED", "CRASHED"):
        time.sleep(2)
    assert _run_state(theirs.id) == "COMPLETED"


def test_gateway_refuses_a_token_over_another_nodes_certificate(stack: EmbeddedStack) -> None:
    """node-1's session token presented over node-2's TLS connection (stolen token): 401 (SPEC B2)."""
    session = json.loads((stack.home / "agents" / "node-1" / "session.json").read_text())
    stack.pki_for("node-2")
    ctx = client_context(
        trust_bundle=stack.pki.bundle, cert=stack.pki.node_cert("node-2"), key=stack.pki.node_key("node-2")
    )
    with httpx.Client(base_url=stack.env["CYXWIZ_GATEWAY_URL"], verify=ctx, timeout=30) as gw:
        response = gw.get(
            "/api/work_pools/gpu", headers={"authorization": f"Bearer {session['session_token']}"}
        )
    assert response.status_code == 401


def test_gateway_refuses_a_connection_without_a_client_certificate(stack: EmbeddedStack) -> None:
    ctx = client_context(trust_bundle=stack.pki.bundle)
    with (
        httpx.Client(base_url=stack.env["CYXWIZ_GATEWAY_URL"], verify=ctx, timeout=10) as gw,
        pytest.raises(httpx.HTTPError),
    ):
        gw.get("/api/health")


def test_gateway_decisions_are_audited(stack: EmbeddedStack) -> None:
    audit_dir: Path = stack.home / "audit"
    lines = [json.loads(line) for p in audit_dir.glob("*.jsonl") for line in p.read_text().splitlines()]
    text = json.dumps(lines)
    assert "prefect:POST /api/work_pools/gpu/get_scheduled_flow_runs" in text
    assert "route is not on the gateway allow-list" in text or "denied" in text


def test_a_banned_node_is_cut_off_on_every_channel_within_5s(stack: EmbeddedStack) -> None:
    """Issue 18 acceptance: the node's open Prefect websocket through the gateway is closed, its gateway
    and coordinator calls are refused, and a new websocket is refused, within 5 s of the ban (last test:
    it bans node-1 for the rest of the module)."""
    from websockets.exceptions import ConnectionClosed, WebSocketException
    from websockets.sync.client import connect as ws_connect

    session = json.loads((stack.home / "agents" / "node-1" / "session.json").read_text())
    ctx = client_context(
        trust_bundle=stack.pki.bundle, cert=stack.pki.node_cert("node-1"), key=stack.pki.node_key("node-1")
    )
    bearer = {"authorization": f"Bearer {session['session_token']}"}
    url = stack.env["CYXWIZ_GATEWAY_URL"].replace("https", "wss") + "/api/events/out"
    ws = ws_connect(url, ssl=ctx, additional_headers=bearer, subprotocols=["prefect"])  # type: ignore[list-item]
    ws.send(json.dumps({"type": "auth", "token": None}))
    assert json.loads(ws.recv(timeout=30))["type"] == "auth_success"  # positive control, real Prefect
    store, issuer = stack.coordinator.store, stack.coordinator.issuer
    store.create_session(session_id="e2e-admin", principal_kind="user", principal_id="root")
    admin = issuer.session(user_id="root", role="admin", session_id="e2e-admin").token
    plain = client_context(trust_bundle=stack.pki.bundle)
    with httpx.Client(base_url=stack.coordinator.url, verify=plain, timeout=30) as c:
        started = time.monotonic()
        r = c.post(
            f"/v1/admin/nodes/{session['node_id']}/ban", json={}, headers={"authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 200, r.text
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    assert time.monotonic() - started <= 5.0
    with httpx.Client(base_url=stack.env["CYXWIZ_GATEWAY_URL"], verify=ctx, headers=bearer, timeout=10) as gw:
        assert gw.get("/api/work_pools/gpu").status_code in (401, 403)
    with httpx.Client(base_url=stack.coordinator.url, verify=ctx, headers=bearer, timeout=10) as coord:
        assert coord.post("/v1/nodes/heartbeat", json={}).status_code in (401, 403)
    with pytest.raises(WebSocketException):  # refused at the handshake, or closed at once
        again = ws_connect(url, ssl=ctx, additional_headers=bearer, subprotocols=["prefect"])  # type: ignore[list-item]
        again.recv(timeout=5)
