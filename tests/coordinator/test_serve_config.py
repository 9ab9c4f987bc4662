"""No stub on the production path: ``cyxwiz serve coordinator --config`` or an explicit, warned ``--dev``.

Issue 16; SPEC F1 (no permissive proof check or escrow-less jobs in production), D1, H2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cyxwiz.cli import app
from cyxwiz.coordinator.config import REQUIRED, CoordinatorConfig
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.transport.tls import client_context
from tests.coordinator.conftest import Env


def _one_error_line(result: Any) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_serve_without_config_or_dev_refuses_with_one_line() -> None:
    result = CliRunner().invoke(app, ["serve", "coordinator", "--state-dir", "/tmp/x-cyxwiz-none"])
    assert result.exit_code == 2
    assert _one_error_line(result).startswith("error: config: the production coordinator needs --config")


def test_dev_is_warned_at_start(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "coordinator", "--dev", "--state-dir", str(tmp_path)])
    assert "WARNING: DEVELOPMENT MODE (--dev)" in result.output
    assert result.exit_code == 2  # and the certificates are still required
    assert "error: cert: --cert, --key and --bundle" in result.output


def test_dev_hooks_say_so_in_health(env: Env) -> None:
    """The permissive hooks (the default of the library's build_coordinator) announce themselves."""
    with env.client() as c:
        body = c.get("/v1/health").json()
    assert body["mode"] == "dev" and "DEVELOPMENT MODE" in body["warning"]


@pytest.fixture
def production_files(tmp_path: Path) -> Iterator[tuple[DevPKI, dict[str, Any], Path]]:
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.storage.crypto import MasterKey

    pki = build_dev_pki(tmp_path / "pki")
    ledger = tmp_path / "ledger.json"
    LedgerConfig(
        rpc_url="http://127.0.0.1:9", db_url=f"sqlite:///{tmp_path / 'escrow.db'}",
        mint="So11111111111111111111111111111111111111112", decimals=6,
        multisig="So11111111111111111111111111111111111111112", minimum_payment=1000,
    ).to_file(ledger)  # fmt: skip
    MasterKey.generate().write(tmp_path / "store.key")
    values: dict[str, Any] = {
        "cert": str(pki.coordinator_cert), "key": str(pki.coordinator_key), "bundle": str(pki.bundle),
        "crl": str(pki.crl), "state_dir": str(tmp_path / "state"), "audit_dir": str(tmp_path / "audit"),
        "ledger_config": str(ledger), "store_root": str(tmp_path / "store"),
        "store_master_key_file": str(tmp_path / "store.key"), "prefect_api_url": "http://127.0.0.1:9/api",
    }  # fmt: skip
    yield pki, values, tmp_path / "coordinator.json"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_each_missing_part_stops_the_start_naming_it(
    production_files: tuple[DevPKI, dict[str, Any], Path], missing: str
) -> None:
    _pki, values, path = production_files
    path.write_text(json.dumps({k: v for k, v in values.items() if k != missing}))
    result = CliRunner().invoke(app, ["serve", "coordinator", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{missing}: the production coordinator needs" in _one_error_line(result)


def test_a_named_part_that_is_not_there_stops_the_start(
    production_files: tuple[DevPKI, dict[str, Any], Path], tmp_path: Path
) -> None:
    _pki, values, path = production_files
    path.write_text(json.dumps({**values, "ledger_config": str(tmp_path / "nope.json")}))
    result = CliRunner().invoke(app, ["serve", "coordinator", "--config", str(path)])
    assert result.exit_code == 2
    assert "ledger_config: " in _one_error_line(result)
    os.chmod(values["store_master_key_file"], 0o644)
    path.write_text(json.dumps(values))
    result = CliRunner().invoke(app, ["serve", "coordinator", "--config", str(path)])
    assert "store_master_key_file: readable by group or others" in _one_error_line(result)


def test_an_unreachable_control_channel_or_ledger_stops_the_start(
    production_files: tuple[DevPKI, dict[str, Any], Path],
) -> None:
    """Probed before the listener binds: a Prefect API or ledger RPC that does not answer is missing."""
    _pki, values, path = production_files
    audit_key = path.parent / "audit.pem"
    from cyxwiz.pki.keys import generate_ed25519, write_private_key

    write_private_key(audit_key, generate_ed25519())
    path.write_text(json.dumps(values))
    result = CliRunner().invoke(
        app, ["serve", "coordinator", "--config", str(path), "--audit-key", str(audit_key)]
    )
    assert result.exit_code == 2, result.output
    assert "prefect_api_url: the Prefect API at" in _one_error_line(result)


@pytest.mark.slow
@pytest.mark.prefect
def test_production_coordinator_wires_real_parts(
    production_files: tuple[DevPKI, dict[str, Any], Path], prefect_server: Any, tmp_path: Path
) -> None:
    """Real Prefect API and ledger service: health says production, an unfunded job is refused (F1)."""
    from cyxwiz.audit import MemorySink
    from cyxwiz.ledger.embedded import provision_demo, start_local_ledger
    from tasks.hooks import production_coordinator

    pki, values, path = production_files
    with start_local_ledger(tmp_path / "ledger-service") as service:
        demo = provision_demo(rpc_url=service.rpc_url, state_dir=tmp_path / "ledger", passphrase=b"pw-123456")
        config_values = {
            **values, "ledger_config": str(demo.config_path), "prefect_api_url": prefect_server.api_url,
            "port": 0,
        }  # fmt: skip
        path.write_text(json.dumps(config_values))
        handle = production_coordinator(CoordinatorConfig.from_file(path), audit=MemorySink())
        handle.server.start()
        try:
            ctx = client_context(trust_bundle=pki.bundle)
            with httpx.Client(base_url=handle.url, verify=ctx, timeout=60) as c:
                health = c.get("/v1/health").json()
                assert {k: health[k] for k in ("status", "mode")} == {"status": "ok", "mode": "production"}
                from tests.coordinator.conftest import auth

                token = Env(pki=pki, coord=handle, audit=MemorySink()).user_token("alice")
                terms = c.get("/v1/wallet/terms", headers=auth(token))
                assert terms.status_code == 200 and terms.json()["multisig"] == demo.config.multisig
                from infra.demo import REFERENCE_JOB

                spec = {k: v for k, v in REFERENCE_JOB.items() if k != "user"}
                r = c.post("/v1/jobs", json={"spec": spec}, headers=auth(token))
                assert r.status_code == 422 and r.json()["field"] == "funding", r.text
                assert handle.store.list_jobs() == []
        finally:
            handle.stop()
