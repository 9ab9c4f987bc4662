"""Gateway benchmark: requests/s through the mTLS gateway ÷ direct to the Prefect API (goal ≥ 0.7).

One local Prefect server; the same allow-listed call (``GET /api/work_pools/gpu``) made N times over one
kept-alive connection, directly over HTTP and through the gateway (TLS 1.3 + client certificate, session
token verified, route matched, audited to an in-memory sink, proxied), and through a gateway that also reads
the coordinator's records on every call as production does (issue 18: node standing and session
revocation from a SQLite coordinator store, the revocation watcher running). Same run, same machine;
interleaved rounds, median per measure.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REQUESTS = 300
ROUNDS = 3


def _rate(client: httpx.Client, path: str) -> float:
    for _ in range(10):
        client.get(path).raise_for_status()
    start = time.perf_counter()
    for _ in range(REQUESTS):
        client.get(path).raise_for_status()
    return REQUESTS / (time.perf_counter() - start)


def run() -> list[tuple[str, float, str]]:
    from cyxwiz.audit import MemorySink
    from cyxwiz.coordinator.store import CoordinatorStore
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.gateway.standing import StoreStanding
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.tokens.issuer import TokenIssuer
    from cyxwiz.tokens.keyring import KeyRing
    from cyxwiz.tokens.verifier import TokenVerifier
    from cyxwiz.transport.identity import PeerIdentity
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
            store = CoordinatorStore.from_url(f"sqlite:///{root / 'coordinator.db'}")
            node = store.register_node(
                peer_id=PeerIdentity.from_certificate(load_certificate(pki.node_cert("node-1"))).peer_id,
                subject="CN=node-1", cert_serial="1", hardware={},
            )  # fmt: skip
            store.create_session(session_id="bench", principal_kind="node", principal_id=node.node_id)
            token = issuer.session(
                node_id=node.node_id, role="node", session_id="bench",
                cert=load_certificate(pki.node_cert("node-1")),
            ).token  # fmt: skip

            def gateway(standing: StoreStanding | None) -> Any:
                # As the gateway CLI wires it: the verifier checks session revocation in the store too.
                checks = TokenVerifier.from_keyring(
                    ring, issuer="cyxwiz-coordinator", audience="cyxwiz-api", revocations=store
                )
                listener, _ = build_gateway(
                    cert=pki.gateway_cert, key=pki.gateway_key, trust_bundle=pki.bundle, crl=pki.crl,
                    upstream=server.api_url.removesuffix("/api"), pool="gpu",
                    verifier=verifier if standing is None else checks,
                    audit=MemorySink(), node_rate=(1e6, 1_000_000), ip_rate=(1e6, 1_000_000),
                    standing=standing,
                )  # fmt: skip
                return listener

            ctx = client_context(
                trust_bundle=pki.bundle, cert=pki.node_cert("node-1"), key=pki.node_key("node-1")
            )
            rates: dict[str, list[float]] = {"direct": [], "gateway": [], "standing": []}
            plain, checked = gateway(None), gateway(StoreStanding(store))
            with plain, checked:
                for _ in range(ROUNDS):
                    with httpx.Client(base_url=server.api_url.removesuffix("/api")) as direct:
                        rates["direct"].append(_rate(direct, "/api/work_pools/gpu"))
                    for name, listener in (("gateway", plain), ("standing", checked)):
                        with httpx.Client(
                            base_url=listener.url, verify=ctx, headers={"authorization": f"Bearer {token}"}
                        ) as via:
                            rates[name].append(_rate(via, "/api/work_pools/gpu"))
    direct_rate, gateway_rate, standing_rate = (statistics.median(rates[k]) for k in rates)
    return [
        (
            "requests/s through gateway / direct",
            gateway_rate / direct_rate,
            f"{gateway_rate:.0f}/s vs {direct_rate:.0f}/s, {REQUESTS} GET /api/work_pools/gpu (goal >= 0.7)",
        ),
        (
            "requests/s through gateway reading the coordinator's records / direct",
            standing_rate / direct_rate,
            f"{standing_rate:.0f}/s vs {direct_rate:.0f}/s (goal >= 0.7)",
        ),
    ]


if __name__ == "__main__":
    for label, ratio, note in run():
        print(f"{label}: {ratio:.3f} ({note})")
