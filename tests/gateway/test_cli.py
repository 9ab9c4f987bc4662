"""``cyxwiz gateway run`` builds a gateway that checks revocations (issue 18; SPEC B5, C1): the
coordinator's database is required, and what is built from it reads bans, revoked sessions and dead job
tokens; the key ring it verifies with follows rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.gateway import cli as gateway_cli
from cyxwiz.gateway.standing import StoreStanding
from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing


class _Built(Exception):
    pass


def test_gateway_cli_requires_the_coordinator_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(gateway_cli.app, ["--keyring", str(tmp_path)])
    assert result.exit_code != 0 and "--db-url" in result.output


def test_gateway_cli_wires_revocations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring_dir = tmp_path / "keyring"
    DirKeyRingStore(ring_dir).save(KeyRing.generate())
    seen: dict[str, Any] = {}

    def build(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise _Built

    import cyxwiz.gateway.service as service

    monkeypatch.setattr(service, "build_gateway", build)
    db = f"sqlite:///{tmp_path / 'coordinator.db'}"
    CoordinatorStore.from_url(db)  # the coordinator's schema
    result = CliRunner().invoke(
        gateway_cli.app,
        ["--keyring", str(ring_dir), "--db-url", db, "--pki-dir", str(tmp_path / "pki")],
    )
    assert isinstance(result.exception, _Built), result.output
    assert isinstance(seen["standing"], StoreStanding)
    assert isinstance(seen["verifier"].revocations, CoordinatorStore)
