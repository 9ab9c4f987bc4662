"""Revocation latency (issue 18, goal ≤ 5 s): how long a revoked node keeps anything after the revocation.

A real coordinator and gateway over mTLS in front of a real local Prefect server. Per round a fresh node
registers, opens Prefect's ``events/out`` websocket and a kept-alive HTTP connection through the gateway;
then it is revoked, and the bench measures from the revoking call to:

* ``ban → gateway refuses``: the next gateway call is refused (401/403 or connection refused),
* ``ban → websocket closed``: the open ``events/out`` websocket is closed by the gateway,
* ``CRL revocation → handshake refused``: a certificate revoked at the CA (CRL file rewritten, no push)
  can no longer complete a TLS handshake with the gateway.

Reported as the median latency in seconds ÷ the 5 s goal (≤ 1.0 meets it), with the seconds beside.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROUNDS = 5
GOAL_S = 5.0


def _until(check: Any, started: float, timeout: float = 10.0) -> float:
    """Seconds from ``started`` until ``check()`` holds (inf past ``timeout``)."""
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter() - started
        time.sleep(0.005)
    return float("inf")


def run() -> list[tuple[str, float, str]]:
    import threading

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    from cyxwiz.coordinator.service import start_coordinator
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.gateway.standing import StoreStanding
    from cyxwiz.issuer.policy import NodeCertIssuer  # the in-process issuer: the CA side is not measured
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.transport.tls import client_context
    from infra.local_server import local_prefect_server
    from tasks.coordinator_channel import node_name

    names = [f"bench-{i}" for i in range(ROUNDS)] + [f"crl-{i}" for i in range(ROUNDS)]
    banned: list[float] = []
    ws_closed: list[float] = []
    crl_refused: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = build_dev_pki(root / "pki", nodes=names)
        with local_prefect_server(root / "prefect") as server:
            subprocess.run(
                [sys.executable, "-m", "prefect", "work-pool", "create", "gpu", "--type", "process"],
                env={**os.environ, **server.env()},
                check=True,
                capture_output=True,
            )
            coord = start_coordinator(
                cert=pki.coordinator_cert, key=pki.coordinator_key, trust_bundle=pki.bundle, crl=pki.crl,
                cert_issuer=NodeCertIssuer.from_dir(pki.ca_dir), state_dir=root / "state",
            )  # fmt: skip
            listener, _ = build_gateway(
                cert=pki.gateway_cert, key=pki.gateway_key, trust_bundle=pki.bundle, crl=pki.crl,
                upstream=server.api_url.removesuffix("/api"), pool="gpu", verifier=coord.verifier,
                queue_for=lambda node_id: node_name(coord.store.node(node_id).subject),
                standing=StoreStanding(coord.store),
            )  # fmt: skip
            admin_sid = "bench-admin"
            coord.store.create_session(session_id=admin_sid, principal_kind="user", principal_id="root")
            admin = coord.issuer.session(user_id="root", role="admin", session_id=admin_sid).token
            plain = client_context(trust_bundle=pki.bundle)
            with listener, httpx.Client(base_url=coord.url, verify=plain, timeout=10) as admin_client:
                for name in names:
                    ctx = client_context(
                        trust_bundle=pki.bundle, cert=pki.node_cert(name), key=pki.node_key(name)
                    )
                    with httpx.Client(base_url=coord.url, verify=ctx, timeout=10) as c:
                        node = c.post("/v1/nodes/register", json={"hardware": {}}).json()
                    headers = {"authorization": f"Bearer {node['session_token']}"}
                    gw = httpx.Client(base_url=listener.url, verify=ctx, headers=headers, timeout=10)
                    assert gw.get("/api/work_pools/gpu").status_code == 200
                    if name.startswith("crl-"):
                        gw.close()
                        started = time.perf_counter()
                        pki.revoke(pki.node_cert(name))

                        def handshake_refused(ctx: Any = ctx, headers: dict[str, str] = headers) -> bool:
                            try:
                                with httpx.Client(
                                    base_url=listener.url, verify=ctx, headers=headers
                                ) as fresh:
                                    fresh.get("/api/health")
                            except httpx.TransportError:
                                return True
                            return False

                        crl_refused.append(_until(handshake_refused, started))
                        continue
                    url = listener.url.replace("https", "wss") + "/api/events/out"
                    ws = ws_connect(url, ssl=ctx, additional_headers=headers, subprotocols=["prefect"])  # type: ignore[list-item]
                    ws.send(json.dumps({"type": "auth", "token": None}))
                    json.loads(ws.recv(timeout=10))
                    closed_at: list[float] = []

                    def watch(ws: Any = ws, closed_at: list[float] = closed_at) -> None:
                        try:
                            while True:
                                ws.recv(timeout=15)
                        except (ConnectionClosed, TimeoutError):
                            closed_at.append(time.perf_counter())

                    watcher = threading.Thread(target=watch, daemon=True)
                    watcher.start()
                    started = time.perf_counter()
                    r = admin_client.post(
                        f"/v1/admin/nodes/{node['node_id']}/ban",
                        json={},
                        headers={"authorization": f"Bearer {admin}"},
                    )
                    r.raise_for_status()

                    def refused(gw: httpx.Client = gw) -> bool:
                        try:
                            return gw.get("/api/work_pools/gpu").status_code in (401, 403)
                        except httpx.TransportError:
                            return True

                    banned.append(_until(refused, started))
                    watcher.join(timeout=15)
                    ws_closed.append(closed_at[0] - started if closed_at else float("inf"))
                    gw.close()
            coord.stop()
    rows = []
    for label, values in (
        ("ban -> gateway refuses (median/goal)", banned),
        ("ban -> websocket closed (median/goal)", ws_closed),
        ("CRL revocation -> handshake refused", crl_refused),
    ):
        median = statistics.median(values)
        rows.append(
            (
                label,
                median / GOAL_S,
                f"median {median:.3f} s, max {max(values):.3f} s over {len(values)} rounds (goal <= 5 s)",
            )
        )
    return rows


if __name__ == "__main__":
    for label, ratio, note in run():
        print(f"{label}: {ratio:.3f} ({note})")
