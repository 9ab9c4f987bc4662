"""A real coordinator (BasicHooks, SQLite, mTLS listener) over the dev PKI, shared by a test module.

Two user certificates (the dev PKI's ``demo-user`` and a second ``other-user`` issued by the same CA)
and a worker node certificate, so tests can act as owner, as another user and as a node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cyxwiz.audit import MemorySink
from cyxwiz.cli import app
from cyxwiz.coordinator.hooks import BasicHooks
from cyxwiz.coordinator.service import CoordinatorHandle
from cyxwiz.pki.certs import Role, write_certificate
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import write_private_key
from cyxwiz.transport.tls import client_context
from tests._coordinator import start_dev_coordinator


@dataclass
class JobsEnv:
    pki: DevPKI
    coord: CoordinatorHandle
    audit: MemorySink
    other_cert: Path
    other_key: Path

    def cli_env(self, who: str = "user") -> dict[str, str | None]:
        """Environment for the CLI acting as ``who``: "user", "other", a node name, or "nobody"."""
        cert, key = {
            "user": (self.pki.user_cert, self.pki.user_key),
            "other": (self.other_cert, self.other_key),
            "nobody": (None, None),
        }.get(who, (self.pki.node_cert(who), self.pki.node_key(who)))
        return {
            "CYXWIZ_COORDINATOR_URL": self.coord.url,
            "CYXWIZ_CA_BUNDLE": str(self.pki.bundle),
            "CYXWIZ_CRL": str(self.pki.crl),
            "CYXWIZ_USER_CERT": str(cert) if cert else None,
            "CYXWIZ_USER_KEY": str(key) if key else None,
            "CYXWIZ_DEBUG": None,
        }

    def cli(self, *args: str, who: str = "user") -> Any:
        return CliRunner().invoke(app, ["job", *args], env=self.cli_env(who))

    def node_client(self, node: str) -> httpx.Client:
        ctx = client_context(
            trust_bundle=self.pki.bundle, cert=self.pki.node_cert(node), key=self.pki.node_key(node)
        )
        return httpx.Client(base_url=self.coord.url, verify=ctx, timeout=10)


def issue_user(pki: DevPKI, name: str) -> tuple[Path, Path]:
    issued = pki.issuing_ca().issue(common_name=name, role=Role.USER, client=True, days=30)
    assert issued.private_key is not None
    cert, key = pki.root / "certs" / f"{name}-cert.pem", pki.root / "certs" / f"{name}-key.pem"
    write_private_key(key, issued.private_key, overwrite=True)
    write_certificate(cert, issued.certificate, overwrite=True)
    return cert, key


@pytest.fixture(scope="module")
def jobs_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsEnv]:
    root = tmp_path_factory.mktemp("jobs")
    pki = build_dev_pki(root / "pki", nodes=("node-a",))
    other_cert, other_key = issue_user(pki, "other-user")
    audit = MemorySink()
    coord = start_dev_coordinator(pki, root / "state", audit, hooks=BasicHooks())
    try:
        yield JobsEnv(pki=pki, coord=coord, audit=audit, other_cert=other_cert, other_key=other_key)
    finally:
        coord.stop()
