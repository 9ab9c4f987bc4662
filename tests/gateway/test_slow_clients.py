"""Unauthenticated and slow clients at the gateway (issue 18; SPEC I): a websocket that never says who it
is is closed after the auth deadline; no body is read before the caller authenticated; bodies are capped
per route. Each attack has its positive control and its audit record."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from cyxwiz.transport.tls import client_context
from tests._rawhttp import head_only
from tests.gateway.conftest import GwEnv


def _ctx(gw: GwEnv, node: str = "node-a"):  # type: ignore[no-untyped-def]
    return client_context(trust_bundle=gw.pki.bundle, cert=gw.pki.node_cert(node), key=gw.pki.node_key(node))


def test_websocket_without_auth_message_is_closed_at_the_deadline(gw: GwEnv) -> None:
    gw.gateway.auth_timeout = 0.5
    url = gw.url.replace("https", "wss") + "/api/events/out"
    with ws_connect(url, ssl=_ctx(gw), open_timeout=5) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert time.monotonic() - started < 9  # closed by the deadline, not by the test's own timeout
    assert any("no auth message within" in r for r in gw.denials())
    # Positive control: the same socket with its auth message is served.
    with ws_connect(url, ssl=_ctx(gw), open_timeout=5, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": f"node:{gw.token('node-a')}"}))
        assert json.loads(ws.recv(timeout=5))["type"] == "auth_success"


def test_no_body_read_before_authentication(gw: GwEnv) -> None:
    """The declared body is never sent: the refusal comes without it."""
    head = "POST /api/logs/ HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 400000"
    status, _ = head_only(gw.url, _ctx(gw), head)
    assert status == 401
    status, _ = head_only(gw.url, _ctx(gw), head + "\nAuthorization: Bearer forged.token.here")
    assert status == 401
    assert not gw.upstream.logs
    # Positive control: with the node's token the body is read (and judged: it names no own run).
    token = gw.token("node-a")
    body = json.dumps([{"message": "hi", "flow_run_id": None}]).encode()
    status, _ = head_only(
        gw.url,
        _ctx(gw),
        f"POST /api/logs/ HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {len(body)}"
        f"\nAuthorization: Bearer {token}",
        body=body,
    )
    assert status == 403
    assert any("log line names no flow run" in r for r in gw.denials())


def test_bodies_capped_per_route(gw: GwEnv) -> None:
    token = gw.token("node-a")
    run = gw.upstream.add_run("node-a", job=False)
    # A flow run's state is a small JSON body: 1 MiB at most, refused on the declared length alone.
    head = (
        f"POST /api/flow_runs/{run['id']}/set_state HTTP/1.1\nHost: x\nContent-Type: application/json"
        f"\nContent-Length: {2 << 20}\nAuthorization: Bearer {token}"
    )
    assert head_only(gw.url, _ctx(gw), head)[0] == 413
    # A chunked body past the cap is cut off while it streams in.
    with gw.client("node-a", token) as c:
        r = c.post(f"/api/flow_runs/{run['id']}/set_state", content=(b"x" * 65536 for _ in range(40)))
    assert r.status_code == 413
    assert sum("body-too-large" in r for r in gw.denials()) >= 2
    # Positive control: logs may be larger (a batch of log lines), and a small state passes.
    with gw.client("node-a", token) as c:
        assert c.post(f"/api/flow_runs/{run['id']}/set_state", json={"state": {}}).status_code == 200
