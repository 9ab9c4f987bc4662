"""The flows' control-plane parts come from a typed Prefect block, env vars as the fallback (issue 16; D2).

Real Prefect server: the block saves and loads, its secrets never show in its repr or the API's answer,
and ``tasks.services.config()`` takes the block when ``CYXWIZ_CONTROL_PLANE_BLOCK`` names one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.control_plane import ControlPlaneBlock
from cyxwiz.errors import ConfigError
from tasks.config import ControlPlaneConfig

pytestmark = [pytest.mark.prefect]


def _config(tmp_path: Path, **changes: object) -> ControlPlaneConfig:
    values: dict[str, object] = {
        "home": tmp_path, "pki_root": tmp_path / "pki", "ledger_config": tmp_path / "ledger.json",
        "store_root": tmp_path / "store", "audit_dir": tmp_path / "audit",
        "coordinator_db": "postgresql://cyx:hunter22@db/cyx", "train_deployment": "sandboxed-train/x",
    }  # fmt: skip
    return ControlPlaneConfig(**{**values, **changes})  # type: ignore[arg-type]


def test_block_round_trip_keeps_secrets_secret(prefect_server: object, tmp_path: Path) -> None:
    config = _config(tmp_path)
    block = ControlPlaneBlock.from_config(
        config, ledger_passphrase="pass-phrase-1", store_master_key="ab" * 32
    )
    block.save("tenants-test", overwrite=True)
    loaded = ControlPlaneBlock.load("tenants-test")
    assert isinstance(loaded, ControlPlaneBlock)
    assert ControlPlaneConfig(**loaded.config_values()) == config
    assert loaded.secret_env() == {
        "CYXWIZ_LEDGER_PASSPHRASE": "pass-phrase-1",
        "CYXWIZ_STORE_MASTER_KEY": "ab" * 32,
    }
    shown = repr(loaded) + json.dumps(loaded.model_dump(mode="json"))
    for secret in ("pass-phrase-1", "ab" * 32, "hunter22"):
        assert secret not in shown
    assert isinstance(loaded.ledger_passphrase, SecretStr)


def test_services_load_the_named_block_else_the_env_file(
    prefect_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import services

    from_block = _config(tmp_path, train_deployment="sandboxed-train/from-block")
    ControlPlaneBlock.from_config(from_block, ledger_passphrase="pw-from-block").save(
        "tenants-svc", overwrite=True
    )
    from_file = _config(tmp_path, train_deployment="sandboxed-train/from-file")
    path = tmp_path / "control-plane.json"
    from_file.to_file(path)
    monkeypatch.setenv("CYXWIZ_CONTROL_PLANE", str(path))
    monkeypatch.setenv("CYXWIZ_LEDGER_PASSPHRASE", "pw-from-env")
    try:
        monkeypatch.delenv("CYXWIZ_CONTROL_PLANE_BLOCK", raising=False)
        services.reset()
        assert services.config().train_deployment == "sandboxed-train/from-file"  # env fallback
        monkeypatch.setenv("CYXWIZ_CONTROL_PLANE_BLOCK", "tenants-svc")
        services.reset()
        assert services.config().train_deployment == "sandboxed-train/from-block"
        # The block's secrets open the plane's parts; they are not exported into the process (D2).
        assert services.current().setting("CYXWIZ_LEDGER_PASSPHRASE") == "pw-from-block"
        assert os.environ["CYXWIZ_LEDGER_PASSPHRASE"] == "pw-from-env"
    finally:
        services.reset()


def test_parts_are_typed_and_can_be_passed_in(prefect_server: object, tmp_path: Path) -> None:
    """``ControlPlane.load(name)`` is the block's, typed; :func:`services.use` hands a plane in (no env)."""
    from tasks import services

    config = _config(tmp_path, train_deployment="sandboxed-train/passed-in")
    ControlPlaneBlock.from_config(config, store_master_key="cd" * 32).save("tenants-typed", overwrite=True)
    plane = services.ControlPlane.load("tenants-typed", environ={})
    assert plane.config == config and plane.setting("CYXWIZ_STORE_MASTER_KEY") == "cd" * 32
    assert "cd" * 32 not in repr(plane)
    try:
        services.use(plane)
        assert services.config() == config
        assert services.store().master_key is not None  # opened with the block's key, not the env's
        assert services.store().root == config.store_root
    finally:
        services.reset()
    with pytest.raises(ConfigError) as caught:
        services.ControlPlane.load(environ={})
    assert caught.value.field == "CYXWIZ_CONTROL_PLANE"
