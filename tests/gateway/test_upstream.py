"""The Prefect API behind the gateway does not answer (issue 21): the node gets a 502, which the Prefect
client retries, not a 500 that fails its call; nothing is audited as a refusal of the node."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyxwiz.audit import MemorySink
from cyxwiz.gateway.service import build_gateway
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.tokens.issuer import TokenIssuer
from cyxwiz.tokens.keyring import KeyRing
from cyxwiz.tokens.verifier import TokenVerifier
from tests.gateway.conftest import POOL, GwEnv


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


@pytest.fixture
def dead_upstream(tmp_path: Path) -> Iterator[GwEnv]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a",))
    ring = KeyRing.generate()
    issuer = TokenIssuer(keyring=ring, issuer="cyxwiz-coordinator", audience="cyxwiz-api")
    verifier = TokenVerifier.from_keyring(ring, issuer="cyxwiz-coordinator", audience="cyxwiz-api")
    audit = MemorySink()
    server, gateway = build_gateway(
        cert=pki.gateway_cert, key=pki.gateway_key, trust_bundle=pki.bundle, crl=pki.crl,
        upstream=f"http://127.0.0.1:{_closed_port()}", pool=POOL, verifier=verifier, audit=audit,
    )  # fmt: skip
    server.start()
    try:
        yield GwEnv(pki, None, audit, issuer, server.url, server.port, gateway)  # type: ignore[arg-type]
    finally:
        server.stop()


def test_an_unanswering_upstream_is_a_502_the_client_retries(gw: GwEnv, dead_upstream: GwEnv) -> None:
    with gw.client("node-a", gw.token("node-a")) as c:  # positive control: the upstream answers
        assert c.get("/api/admin/version").status_code == 200
    env = dead_upstream
    cert = load_certificate(env.pki.node_cert("node-a"))
    token = env.issuer.session(node_id="node-a", cert=cert).token
    with env.client("node-a", token) as c:
        r = c.get("/api/admin/version")
    assert r.status_code == 502, r.text
    assert r.json()["type"].endswith("upstream-unavailable")
    assert env.denials() == []  # the node was not refused: nothing recorded against it
