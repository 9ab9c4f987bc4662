"""Fixtures for authorization tests: a real dev PKI (two node certificates), tokens, jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.pki.peerid import peer_id
from cyxwiz.tokens import KeyRing, TokenIssuer, TokenVerifier

ISSUER = "cyxwiz-coordinator"
AUDIENCE = "cyxwiz-api"


@dataclass(frozen=True)
class Node:
    name: str
    cert: x509.Certificate
    node_id: str  # the PeerID of its certificate key


@dataclass(frozen=True)
class Job:
    job_id: str
    user_id: str
    assigned_node: str | None


@pytest.fixture(scope="session")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Node, Node]:
    pki = build_dev_pki(Path(tmp_path_factory.mktemp("pki")), nodes=("node-1", "node-2"))
    out = []
    for name in ("node-1", "node-2"):
        cert = load_certificate(pki.node_cert(name))
        out.append(Node(name, cert, peer_id(cert)))
    return out[0], out[1]


@pytest.fixture(scope="session")
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture(scope="session")
def issuer(ring: KeyRing) -> TokenIssuer:
    return TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="session")
def verifier(ring: KeyRing) -> TokenVerifier:
    return TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
def job_of_alice(nodes: tuple[Node, Node]) -> Job:
    return Job(job_id="job-alice-1", user_id="alice", assigned_node=nodes[0].node_id)


HOUR = timedelta(hours=1)
