"""Fixtures for the PKI tests: a dev PKI built once per session, copied per test that mutates it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cyxwiz.pki.devpki import DevPKI, build_dev_pki


@pytest.fixture(scope="session")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """Read-only dev PKI shared by tests that do not revoke or rewrite anything."""
    return build_dev_pki(tmp_path_factory.mktemp("shared-pki"), nodes=("node-1", "node-2"))


@pytest.fixture
def dev_pki(tmp_path: Path, shared_pki: DevPKI) -> DevPKI:
    """A private copy (cheap) for tests that revoke or tamper."""
    root = tmp_path / "pki"
    shutil.copytree(shared_pki.root, root)
    return build_dev_pki(root, nodes=shared_pki.nodes)
