"""A real coordinator on loopback over mTLS, with the dev PKI and an in-memory audit sink."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cyxwiz.audit import MemorySink
from cyxwiz.coordinator.service import CoordinatorHandle
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.tokens.issuer import new_id
from cyxwiz.transport.tls import client_context
from tests._coordinator import start_dev_coordinator


@dataclass
class Env:
    pki: DevPKI
    coord: CoordinatorHandle
    audit: MemorySink

    def client(self, who: str | None = None) -> httpx.Client:
        """An HTTPS client presenting ``who``'s certificate (a node name, "user", or None)."""
        if who is None:
            ctx = client_context(trust_bundle=self.pki.bundle)
        elif who == "user":
            ctx = client_context(trust_bundle=self.pki.bundle, cert=self.pki.user_cert, key=self.pki.user_key)
        else:
            ctx = client_context(
                trust_bundle=self.pki.bundle, cert=self.pki.node_cert(who), key=self.pki.node_key(who)
            )
        return httpx.Client(base_url=self.coord.url, verify=ctx, timeout=10)

    def user_token(self, user_id: str, *, role: str = "user", scopes: list[str] | None = None) -> str:
        session_id = new_id()
        self.coord.store.create_session(session_id=session_id, principal_kind="user", principal_id=user_id)
        return self.coord.issuer.session(
            user_id=user_id, role=role, session_id=session_id, scopes=scopes
        ).token

    def register(self, node: str) -> dict[str, Any]:
        with self.client(node) as c:
            r = c.post("/v1/nodes/register", json={"hardware": {"gpus": 1, "cpu_cores": 4}})
            assert r.status_code == 200, r.text
            return dict(r.json())


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def make_env(tmp_path: Path, **options: Any) -> Iterator[Env]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a", "node-b"))
    audit = MemorySink()
    coord = start_dev_coordinator(pki, tmp_path / "state", audit, **options)
    try:
        yield Env(pki=pki, coord=coord, audit=audit)
    finally:
        coord.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)
