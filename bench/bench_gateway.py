"""Gateway benchmark: requests/s through the mTLS gateway ÷ direct to the Prefect API (goal ≥ 0.7).

One local Prefect server; the same allow-listed call (``GET /api/work_pools/gpu``) made N times over one
kept-alive connection, directly over HTTP and through the gateway (TLS 1.3 + client certificate, session
token verified, route matched, audited to an in-memory sink, proxied). Same run, same machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REQUESTS = 300


def _rate(client: httpx.Client, path: str) -> float:
    for _ in range(10):
        client.get(path).raise_for_status()
    start = time.perf_counter()
    for _ in range(REQUESTS):
        client.get(path).raise_for_status()
    return REQUESTS / (time.perf_counter() - start)


def run() -> list[tuple[str, float, str]]:
    from cyxwiz.audit import MemorySink
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.tokens.issuer import TokenIssuer
    from cyxwiz.tokens.keyring import KeyRing
    from cyxwiz.tokens.verifier import TokenVerifier
    from cyxwiz.transport.tls import client_context
    from infra.local_server import local_prefect_server

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = build_dev_pki(root / "pki", nodes=("node-1",))
        with local_prefect_server(root / "prefect") as server:
            subprocess.run(
                [sys.executable, "-m", "prefect", "work-pool", "create", "gpu", "--type", "process"],
                env={**os.environ, **server.env()},
                check=True,
                capture_output=True,
            )
            ring = KeyRing.generate()
            issuer = TokenIssuer(keyring=ring, issuer="cyxwiz-coordinator", audience="cyxwiz-api")
            verifier = TokenVerifier.from_keyring(ring, issuer="cyxwiz-coordinator", audience="cyxwiz-api")
            token = issuer.session(
                node_id="node-1", role="node", cert=load_certificate(pki.node_cert("node-1"))
            ).token
            listener, _ = build_gateway(
                cert=pki.gateway_cert,
                key=pki.gateway_key,
                trust_bundle=pki.bundle,
                crl=pki.crl,
                upstream=server.api_url.removesuffix("/api"),
                pool="gpu",
                verifier=verifier,
                audit=MemorySink(),
                node_rate=(1e6, 1_000_000),
                ip_rate=(1e6, 1_000_000),
            )
            with listener:
                ctx = client_context(
                    trust_bundle=pki.bundle, cert=pki.node_cert("node-1"), key=pki.node_key("node-1")
                )
                with httpx.Client(base_url=server.api_url.removesuffix("/api")) as direct:
                    direct_rate = _rate(direct, "/api/work_pools/gpu")
                with httpx.Client(
                    base_url=listener.url, verify=ctx, headers={"authorization": f"Bearer {token}"}
                ) as via:
                    gateway_rate = _rate(via, "/api/work_pools/gpu")
    return [
        (
            "requests/s through gateway / direct",
            gateway_rate / direct_rate,
            f"{gateway_rate:.0f}/s vs {direct_rate:.0f}/s, {REQUESTS} GET /api/work_pools/gpu (goal >= 0.7)",
        )
    ]


if __name__ == "__main__":
    for label, ratio, note in run():
        print(f"{label}: {ratio:.3f} ({note})")
