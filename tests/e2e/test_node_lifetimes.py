"""Issue 18 acceptance, end to end: a real node agent (its Prefect worker, its tunnel, its heartbeat and
renewal loop) through the real mTLS gateway to a real Prefect server (SPEC A6, A7, B2, B5, C3).

1. The issuer service signs 12-second node certificates: over three lifetimes, with a job's flow run in
   flight (task events, logs, progress reports, an artifact), the node never loses its session and stays
   one node. 2. A revoked node is cut off on every channel within 5 s: gateway HTTP, logs, artifacts, the
   events websockets in and out, the worker channel, the coordinator, its presigned URLs, new handshakes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from cyxwiz.issuer.service import start_issuer_service
from cyxwiz.transport.tls import client_context
from infra.stack import EmbeddedStack, embedded_stack, prefect_cli
from tests.e2e.lifecycle_conftest import QUICK_POLL

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(900)]

LIFETIME = dt.timedelta(seconds=12)
NODE = "node-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    home = tmp_path_factory.mktemp("node-lifetimes")
    with embedded_stack(home, say=lambda _m: None, nodes=(NODE,)) as built:
        prefect_cli(
            "--no-prompt", "deploy", "tests/e2e/flows/long_job.py:long_job", "--name", "long-job",
            "--pool", "gpu", env=built.env,
        )  # fmt: skip
        ctx = built.coordinator.app.app.state.coordinator  # type: ignore[attr-defined]
        assert ctx.renewer is not None and ctx.revoker is not None
        # The coordinator holds no CA key (issue 17): an issuer service of its own, signing 12 s
        # certificates, takes the stack's place for renewals and revocations.
        with start_issuer_service(
            ca_dir=built.pki.ca_dir, state_dir=home / "issuer-short", env=dict(os.environ),
            lifetime_s=LIFETIME.total_seconds(),
        ) as short:  # fmt: skip
            client = short.client()
            ctx.revoker.issuer = client
            built.coordinator.app.app.state.coordinator = replace(ctx, renewer=client)  # type: ignore[attr-defined]
            _bootstrap_past_half_life(built)
            built.env.update(QUICK_POLL)
            built.start_agent(NODE)
            built.wait_for_node(NODE)
            yield built


def _bootstrap_past_half_life(stack: EmbeddedStack) -> None:
    """The node's bootstrap certificate has been on it for a day and a half of its two: its renewal is
    due at the agent's first heartbeat (the agent counts half-life from when the file arrived)."""
    from cyxwiz.pki.certs import Role, write_certificate
    from cyxwiz.pki.keys import write_private_key

    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1, hours=12)
    issued = stack.pki.issuing_ca().issue(
        common_name=NODE, role=Role.WORKER, client=True, days=2, not_before=since
    )
    assert issued.private_key is not None
    write_private_key(stack.pki.node_key(NODE), issued.private_key, overwrite=True)
    write_certificate(stack.pki.node_cert(NODE), issued.certificate, overwrite=True)
    os.utime(stack.pki.node_cert(NODE), (since.timestamp(), since.timestamp()))


def _session(stack: EmbeddedStack) -> dict[str, Any]:
    return dict(json.loads((stack.home / "agents" / NODE / "session.json").read_text()))


def _assigned_job(stack: EmbeddedStack, node_id: str) -> str:
    job = stack.coordinator.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=900)
    stack.coordinator.store.assign_job(job.job_id, node_id)
    return job.job_id


def test_a_node_keeps_its_session_through_several_certificate_lifetimes(stack: EmbeddedStack) -> None:
    from prefect.deployments import run_deployment

    node_id = str(_session(stack)["node_id"])
    job_id = _assigned_job(stack, node_id)
    seconds = 3 * LIFETIME.total_seconds()
    run = run_deployment(
        "long-job/long-job", parameters={"job_id": job_id, "seconds": seconds, "every": 2.0},
        work_queue_name=node_id, timeout=360,
    )  # fmt: skip
    assert run.state is not None and run.state.is_completed(), run.state
    progress = stack.coordinator.store.job(job_id).progress
    assert progress["step"] == progress["total"] == int(seconds / 2)  # every report got through
    renewed = list((stack.home / "agents" / NODE / "identity").glob("*-cert.pem"))
    assert len(renewed) >= 3, "several certificates came and went while the job ran"
    # The run itself says it reported under several certificates (its artifact, made through the gateway
    # in the node's namespace): the job was in flight across the renewals, not between them.
    of_run = {"artifacts": {"flow_run_id": {"any_": [str(run.id)]}}}
    made = httpx.post(f"{stack.prefect.api_url}/artifacts/filter", json=of_run, timeout=30).json()
    [said] = [a["data"] for a in made if str(a.get("key") or "").endswith("-long-job")]
    assert int(said.split(" under ")[1].split()[0]) >= 2, said
    assert stack.agents[NODE].poll() is None  # the agent never fell over
    nodes = stack.coordinator.store.list_nodes()
    assert [n.node_id for n in nodes] == [node_id] and nodes[0].status == "active"  # one node all along


def _closed_within(ws: Any, deadline: float) -> bool:
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            ws.recv(timeout=max(0.05, deadline - time.monotonic()))
    except ConnectionClosed:
        return time.monotonic() <= deadline
    except TimeoutError:
        return False


def _hello(node_id: str) -> str:
    from prefect.client.schemas import worker_channel as wc

    return json.dumps(
        {
            "type": "worker.hello.v1", "id": str(uuid.uuid4()),
            "sent_at": dt.datetime.now(dt.UTC).isoformat(),
            "payload": {
                "consumer_id": str(uuid.uuid4()), "worker_name": f"cyxwiz-{node_id}",
                "worker_type": "cyxwiz-sandbox", "heartbeat_interval_seconds": 30,
                "supported_channel_versions": [wc.WORK_POOL_WORKER_CHANNEL_VERSION],
                "requested_capabilities": [wc.WORKER_HEARTBEAT_CAPABILITY, wc.WORK_POOL_SNAPSHOT_CAPABILITY],
                "work_queue_names": [node_id],
            },
        }
    )  # fmt: skip


def test_a_revoked_node_is_cut_off_on_every_channel_within_5s(stack: EmbeddedStack) -> None:
    """Last in the module: the node stays revoked."""
    from prefect.deployments import run_deployment
    from websockets.sync.client import connect as ws_connect

    session = _session(stack)
    node_id = str(session["node_id"])
    job_id = _assigned_job(stack, node_id)
    run = run_deployment(
        "long-job/long-job", parameters={"job_id": job_id, "seconds": 300.0, "every": 2.0},
        work_queue_name=node_id, timeout=0,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while stack.coordinator.store.job(job_id).progress.get("step", 0) < 1:
        assert time.monotonic() < deadline, "the long job never started"
        time.sleep(1)
    # The identity in force now, taken just after a renewal: every connection ends with the certificate
    # it presented, so one near the end of its 12 s would close the controls below before the revocation
    # (a loaded CI host takes seconds over them). A fresh one leaves its whole lifetime.
    renewed_from = _session(stack)["cert"]  # each renewal's certificate is a file of its own
    while _session(stack)["cert"] == renewed_from:
        assert time.monotonic() < deadline + 3 * LIFETIME.total_seconds(), "no renewal came"
        time.sleep(0.1)
    session = _session(stack)
    ctx = client_context(trust_bundle=stack.pki.bundle, cert=Path(session["cert"]), key=Path(session["key"]))
    bearer = {"authorization": f"Bearer {session['session_token']}"}
    gateway_url = stack.env["CYXWIZ_GATEWAY_URL"]
    ws_base = gateway_url.replace("https", "wss") + "/api"
    gw = httpx.Client(base_url=gateway_url, verify=ctx, headers=bearer, timeout=10)
    coord = httpx.Client(base_url=stack.coordinator.url, verify=ctx, timeout=10)
    job_token = coord.get(f"/v1/jobs/{job_id}/token", headers=bearer).json()["job_token"]
    job_auth = {"authorization": f"Bearer {job_token}"}
    data = b"late output"
    grant = {"kind": "output", "name": "late.bin", "method": "PUT", "size": len(data)}
    grant["sha256"] = hashlib.sha256(data).hexdigest()
    line = {"flow_run_id": str(run.id), "message": "probe", "level": 20, "name": "probe",
            "timestamp": dt.datetime.now(dt.UTC).isoformat()}  # fmt: skip
    artifact = {"flow_run_id": str(run.id), "type": "markdown", "data": "probe", "key": "probe"}
    auth_message = json.dumps({"type": "auth", "token": f"node:{session['session_token']}"})

    # Positive controls: every channel works for the node before the revocation.
    assert gw.get("/api/work_pools/gpu").status_code == 200
    assert gw.post("/api/logs/", json=[line]).status_code < 300
    assert gw.post("/api/artifacts/", json=artifact).status_code < 300
    put = coord.post(f"/v1/jobs/{job_id}/urls", json=grant, headers=job_auth)
    assert put.status_code == 200, put.text
    url = put.json()["url"]
    ws_in = ws_connect(f"{ws_base}/events/in", ssl=ctx)
    ws_in.send(auth_message)
    ws_out = ws_connect(f"{ws_base}/events/out", ssl=ctx, subprotocols=["prefect"])  # type: ignore[list-item]
    ws_out.send(auth_message)
    assert json.loads(ws_out.recv(timeout=30))["type"] == "auth_success"
    worker = ws_connect(f"{ws_base}/work_pools/gpu/workers/connect", ssl=ctx, subprotocols=["prefect"])  # type: ignore[list-item]
    worker.send(auth_message)
    worker.send(_hello(node_id))
    frames = [json.loads(worker.recv(timeout=30))["type"] for _ in range(2)]
    assert frames == ["auth_success", "worker.ready.v1"], frames  # the server took the node's hello

    store, issuer = stack.coordinator.store, stack.coordinator.issuer
    store.create_session(session_id="e2e-admin-revoke", principal_kind="user", principal_id="root")
    admin = issuer.session(user_id="root", role="admin", session_id="e2e-admin-revoke").token
    with httpx.Client(
        base_url=stack.coordinator.url, verify=client_context(trust_bundle=stack.pki.bundle)
    ) as c:
        started = time.monotonic()
        r = c.post(f"/v1/admin/nodes/{node_id}/revoke", json={"reason": "keyCompromise"},
                   headers={"authorization": f"Bearer {admin}"})  # fmt: skip
        assert r.status_code == 200, r.text
    deadline = started + 5.0
    for name, ws in (("events/in", ws_in), ("events/out", ws_out), ("workers/connect", worker)):
        assert _closed_within(ws, deadline), f"{name} still open"

    def refused(call: Any) -> bool:
        try:
            return int(call().status_code) in (401, 403)
        except httpx.HTTPError:
            return True  # the connection was closed, or the handshake refused

    def fresh_handshake() -> httpx.Response:
        with httpx.Client(base_url=gateway_url, verify=ctx) as fresh:
            return fresh.get("/api/health")  # refused once the gateway's TLS context has the new CRL

    def handshake_refused() -> bool:
        try:
            fresh_handshake()
        except httpx.HTTPError:
            return True
        return False

    while not handshake_refused() or not all(
        refused(call)
        for call in (
            lambda: gw.get("/api/work_pools/gpu"),
            lambda: gw.post("/api/logs/", json=[line]),
            lambda: gw.post("/api/artifacts/", json=artifact),
            lambda: coord.post(f"/v1/jobs/{job_id}/urls", json=grant, headers=job_auth),
            lambda: coord.post("/v1/nodes/heartbeat", json={}, headers=bearer),
            lambda: httpx.put(
                url["url"] if isinstance(url, dict) else url,
                content=data,
                verify=client_context(trust_bundle=stack.pki.bundle),
            ),
        )
    ):
        assert time.monotonic() < deadline, "a channel still answered the revoked node after 5 s"
        time.sleep(0.2)
    # The session ban is immediate, the CRL reaches the listener's TLS context a moment later: both are
    # polled above against the same 5 s; by now a new handshake with the revoked certificate is refused.
    with pytest.raises(httpx.HTTPError):
        fresh_handshake()
    assert time.monotonic() - started <= 5.0
    gw.close()
    coord.close()
