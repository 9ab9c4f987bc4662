"""Transport benchmark: mTLS handshake time with a 100 000-entry CRL ÷ with an empty CRL (goal ≤ 1.2).

Both servers run in this process on loopback with the same certificates; each sample is a full TLS 1.3
handshake plus one small HTTP request on a new connection (no session resumption: tickets are off).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from tests.transport.conftest import client_ctx, request, whoami_app
from tests.transport.pki_fixture import TestPKI

SAMPLES = 60


def _handshakes(pki: TestPKI, crl_entries: int) -> float:
    pki.write_crl(extra_serials=crl_entries)
    tls = ServerTLS(cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl)
    node = pki.leaf(f"bench-{crl_entries}")
    ctx = client_ctx(pki, node)
    with MTLSServer(app=whoami_app, tls=tls) as srv:
        for _ in range(5):
            request(srv.port, ctx)
        times = []
        for _ in range(SAMPLES):
            start = time.perf_counter()
            request(srv.port, ctx)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run() -> list[tuple[str, float, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        pki = TestPKI(Path(tmp))
        empty = _handshakes(pki, 0)
        big = _handshakes(pki, 100_000)
    return [
        (
            "mTLS handshake+request, 100k-entry CRL / empty CRL",
            big / empty,
            f"median {big * 1000:.2f} ms vs {empty * 1000:.2f} ms, {SAMPLES} new connections (goal <= 1.2)",
        )
    ]


if __name__ == "__main__":
    for label, ratio, note in run():
        print(f"{label}: {ratio:.3f} ({note})")
