"""A gateway over real mTLS in front of a loopback upstream that answers like the Prefect API.

The upstream deliberately over-answers (every run, every event, whatever filter was asked) so the tests
prove the gateway does the narrowing. A real ``prefect server`` run is in test_prefect_worker.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket

from cyxwiz.audit import MemorySink
from cyxwiz.gateway.proxy import Gateway
from cyxwiz.gateway.service import build_gateway
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.tokens.issuer import TokenIssuer
from cyxwiz.tokens.keyring import KeyRing
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.tls import client_context

POOL = "cyxwiz-gpu"


@dataclass
class Upstream:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen_queue_names: list[Any] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    emitted: list[Any] = field(default_factory=list)
    seen_run_filters: list[Any] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    worker_frames: list[Any] = field(default_factory=list)
    cleanup_for: list[str] = field(default_factory=list)  # flow run ids the worker channel sends cleanups for

    def add_run(self, queue: str, *, job: bool = True) -> dict[str, Any]:
        run = {
            "id": str(uuid.uuid4()),
            "work_queue_name": queue,
            "work_pool_name": POOL,
            "deployment_id": str(uuid.uuid4()),
            "flow_id": str(uuid.uuid4()),
            "work_queue_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, queue)),
            "parameters": {"job_id": f"job-{queue}"} if job else {},
            "tags": [],
        }
        self.runs[run["id"]] = run
        return run

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.get("/api/admin/version")
        def version(request: Request) -> str:
            self.headers.append(dict(request.headers))
            return "3.8.8"

        @api.post("/api/work_pools/{pool}/workers/heartbeat")
        async def worker_heartbeat(pool: str, request: Request) -> None:
            self.worker_frames.append({"type": "http-heartbeat", **(await request.json())})

        @api.post("/api/artifacts/")
        async def create_artifact(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.artifacts.append(body)
            return {**body, "id": str(uuid.uuid4())}

        @api.patch("/api/artifacts/{artifact_id}")
        async def update_artifact(artifact_id: str, request: Request) -> None:
            self.artifacts.append({"patch": artifact_id, **(await request.json())})

        @api.websocket("/api/work_pools/{pool}/workers/connect")
        async def worker_connect(ws: WebSocket, pool: str) -> None:
            await ws.accept(subprotocol="prefect")
            while True:
                frame = json.loads(await ws.receive_text())
                self.worker_frames.append(frame)
                if frame.get("type") == "worker.hello.v1":
                    await ws.send_json({"type": "worker.ready.v1", "payload": {}})
                    for run_id in self.cleanup_for:
                        target = {"flow_run_id": run_id}
                        payload = {
                            "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, run_id)),
                            "target": target,
                        }
                        await ws.send_json({"type": "cleanup.message.v1", "payload": payload})
                    await ws.send_json({"type": "done"})

        @api.get("/api/work_pools/{pool}")
        def pool(pool: str) -> dict[str, str]:
            return {"name": pool, "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, pool))}

        @api.post("/api/work_pools/{pool}/get_scheduled_flow_runs")
        async def scheduled(pool: str, request: Request) -> list[dict[str, Any]]:
            self.seen_queue_names.append((await request.json()).get("work_queue_names"))
            return [{"flow_run": r} for r in self.runs.values()]

        @api.post("/api/work_pools/{pool}/queues/filter")
        def queues(pool: str) -> list[dict[str, str]]:
            return [{"name": r["work_queue_name"]} for r in self.runs.values()]

        @api.get("/api/flow_runs/{run_id}")
        def get_run(run_id: str) -> dict[str, Any]:
            return self.runs[run_id]

        @api.patch("/api/flow_runs/{run_id}")
        async def patch_run(run_id: str, request: Request) -> dict[str, Any]:
            self.runs[run_id].update(await request.json())
            return self.runs[run_id]

        @api.post("/api/flow_runs/{run_id}/set_state")
        def set_state(run_id: str) -> dict[str, str]:
            return {"status": "ACCEPT"}

        @api.post("/api/flow_runs/filter")
        async def all_runs(request: Request) -> list[dict[str, Any]]:
            self.seen_run_filters.append(await request.json())
            return list(self.runs.values())

        @api.get("/api/deployments/{dep_id}")
        def deployment(dep_id: str) -> dict[str, str]:
            return {"id": dep_id}

        @api.post("/api/logs/")
        async def logs(request: Request) -> None:
            self.logs.extend(await request.json())

        @api.websocket("/api/events/in")
        async def events_in(ws: WebSocket) -> None:
            await ws.accept()
            auth = json.loads(await ws.receive_text())
            self.emitted.append({"auth": auth.get("token")})
            while True:
                text = await ws.receive_text()
                self.emitted.append(json.loads(text))
                if self.emitted[-1].get("event") == "test.end":
                    await ws.send_text("bye")

        @api.websocket("/api/events/out")
        async def events_out(ws: WebSocket) -> None:
            await ws.accept(subprotocol="prefect")
            auth = await ws.receive_json()
            await ws.send_json({"type": "auth_success", "seen_token": auth.get("token")})
            flt = await ws.receive_json()
            await ws.send_json({"type": "filter_seen", "filter": flt})
            for run_id in self.runs:
                event = {"resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"}, "event": "x"}
                await ws.send_json({"type": "event", "event": event})
            await ws.send_json({"type": "done"})
            await ws.receive_text()

        return api


def _serve(app: Any) -> tuple[uvicorn.Server, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, port


@dataclass
class GwEnv:
    pki: DevPKI
    upstream: Upstream
    audit: MemorySink
    issuer: TokenIssuer
    url: str
    port: int
    gateway: Gateway

    def token(self, node: str, *, cert_of: str | None = None) -> str:
        cert = load_certificate(self.pki.node_cert(cert_of or node))
        return self.issuer.session(node_id=node, cert=cert).token

    def job_token(self, node: str, job_id: str, *, cert_of: str | None = None) -> str:
        import datetime as dt

        cert = load_certificate(self.pki.node_cert(cert_of or node))
        return self.issuer.job(node_id=node, job_id=job_id, cert=cert, duration=dt.timedelta(hours=1)).token

    def client(
        self, node: str | None, token: str | None = None, job_token: str | None = None
    ) -> httpx.Client:
        if node is None:
            ctx = client_context(trust_bundle=self.pki.bundle)
        else:
            ctx = client_context(
                trust_bundle=self.pki.bundle, cert=self.pki.node_cert(node), key=self.pki.node_key(node)
            )
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if job_token:
            headers["x-cyxwiz-job-token"] = job_token
        return httpx.Client(base_url=self.url, verify=ctx, headers=headers, timeout=10)

    def denials(self) -> list[str]:
        return [str(e.details.get("reason")) for e in self.audit.events if e.outcome.value != "success"]


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GwEnv]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a", "node-b"))
    upstream = Upstream()
    up_server, up_port = _serve(upstream.app())
    ring = KeyRing.generate()
    issuer = TokenIssuer(keyring=ring, issuer="cyxwiz-coordinator", audience="cyxwiz-api")
    verifier = TokenVerifier.from_keyring(ring, issuer="cyxwiz-coordinator", audience="cyxwiz-api")
    audit = MemorySink()
    server, gateway = build_gateway(
        cert=pki.gateway_cert,
        key=pki.gateway_key,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        upstream=f"http://127.0.0.1:{up_port}",
        pool=POOL,
        verifier=verifier,
        audit=audit,
        upstream_auth="gateway:upstream-secret",
    )
    server.start()
    try:
        yield GwEnv(pki, upstream, audit, issuer, server.url, server.port, gateway)
    finally:
        server.stop()
        up_server.should_exit = True
