"""The flows' control-plane parts come from a typed Prefect block, env vars as the fallback (issue 16; D2).

The block holds no secret (issue 17; SPEC F1, C3, I): any Prefect API client — the coordinator and gateway
that face nodes and users hold the credential — reads a block document with ``include_secrets=true``. Real
Prefect server: what another client reads back carries no secret, an older document with a secret set is
refused at load naming the field, and the flows' services take their secrets from the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from blocks.control_plane import ControlPlaneBlock
from blocks.no_secrets import SecretInBlockError
from cyxwiz.errors import ConfigError
from tasks.config import ControlPlaneConfig

pytestmark = [pytest.mark.prefect]

SLUG = "cyxwiz-control-plane"


def _config(tmp_path: Path, **changes: object) -> ControlPlaneConfig:
    values: dict[str, object] = {
        "home": tmp_path, "pki_root": tmp_path / "pki", "ledger_config": tmp_path / "ledger.json",
        "store_root": tmp_path / "store", "audit_dir": tmp_path / "audit",
        "coordinator_db": "postgresql://cyx@db/cyx", "train_deployment": "sandboxed-train/x",
    }  # fmt: skip
    return ControlPlaneConfig(**{**values, **changes})  # type: ignore[arg-type]


def _attacker_reads(api_url: str, name: str) -> dict[str, object]:
    """What a facing process holding the Prefect API credential reads: the document, secrets included."""
    url = f"{api_url}/block_types/slug/{SLUG}/block_documents/name/{name}"
    answer = httpx.get(url, params={"include_secrets": "true"}, timeout=30)
    answer.raise_for_status()
    data: dict[str, object] = answer.json()["data"]
    return data


def test_saved_block_carries_no_secret_for_another_client(
    prefect_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: read the saved document as another API client with include_secrets; positive control: the
    plane's parts still open, with the secrets from the control worker's environment (F1)."""
    from tasks import services

    config = _config(tmp_path)
    ControlPlaneBlock.from_config(config).save("tenants-test", overwrite=True)
    data = _attacker_reads(prefect_server.api_url, "tenants-test")  # type: ignore[attr-defined]
    assert not {"ledger_passphrase", "store_master_key"} & set(data)
    assert data["ledger_config"] == str(config.ledger_config)
    loaded = ControlPlaneBlock.load("tenants-test")
    assert isinstance(loaded, ControlPlaneBlock)
    assert ControlPlaneConfig(**loaded.config_values()) == config

    passphrase = tmp_path / "ledger-passphrase"
    passphrase.write_text("pw-from-credential", encoding="ascii")
    passphrase.chmod(0o600)
    environ = {"CYXWIZ_LEDGER_PASSPHRASE_FILE": str(passphrase), "CYXWIZ_STORE_MASTER_KEY": "cd" * 32}
    plane = services.ControlPlane.load("tenants-test", environ=environ)
    assert plane.config == config
    assert plane.ledger_passphrase() == b"pw-from-credential"
    assert "cd" * 32 not in repr(plane)
    try:
        services.use(plane)
        assert services.store().master_key is not None  # opened with the environment's key
        assert services.store().root == config.store_root
    finally:
        services.reset()
    monkeypatch.delenv("CYXWIZ_LEDGER_PASSPHRASE", raising=False)
    monkeypatch.delenv("CYXWIZ_LEDGER_PASSPHRASE_FILE", raising=False)
    assert services.ControlPlane.load("tenants-test", environ={}).ledger_passphrase() is None


@pytest.mark.parametrize(
    ("field", "value", "instead"),
    [
        ("ledger_passphrase", "pass-phrase-1", "CYXWIZ_LEDGER_PASSPHRASE_FILE"),
        ("store_master_key", "ab" * 32, "CYXWIZ_STORE_MASTER_KEY_FILE"),
        ("coordinator_db", "postgresql://cyx:hunter22@db/cyx", "PGPASSFILE"),
    ],
)
def test_an_older_block_with_a_secret_is_refused_at_load(
    prefect_server: object, tmp_path: Path, field: str, value: str, instead: str
) -> None:
    """A document an older version saved with a secret set: loading it is refused, naming the field and
    where the secret goes; no plane is built from it (F1, D2)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    from tasks import services

    good = ControlPlaneBlock.from_config(_config(tmp_path))
    good.save("tenants-current", overwrite=True)
    data = {**json.loads(good.model_dump_json(include=set(good.config_values()))), field: value}
    with get_client(sync_client=True) as client:
        current = client.read_block_document_by_name("tenants-current", SLUG)
        client.create_block_document(
            BlockDocumentCreate(
                name=f"tenants-old-{field.replace('_', '-')}",
                data=data,
                block_schema_id=current.block_schema_id,
                block_type_id=current.block_type_id,
            )
        )
    with pytest.raises(ConfigError) as caught:
        services.ControlPlane.load(f"tenants-old-{field.replace('_', '-')}", environ={})
    assert caught.value.field == "CYXWIZ_CONTROL_PLANE_BLOCK"
    message = str(caught.value)
    assert "\n" not in message
    assert (
        f"{field}: a Prefect block must hold no secret" in message or f"{field}: the URL carries" in message
    )
    assert instead in message
    assert value not in message and "hunter22" not in message


def test_block_refuses_secrets_when_built(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        ControlPlaneBlock(**{**ControlPlaneBlock.from_config(_config(tmp_path)).config_values(),
                             "ledger_passphrase": "pw"})  # fmt: skip
    assert isinstance(caught.value.errors()[0]["ctx"]["error"], SecretInBlockError)
    with pytest.raises(ValidationError, match="coordinator_db: the URL carries a password"):
        ControlPlaneBlock.from_config(_config(tmp_path, coordinator_db="postgresql://u:pw@db/x"))


def test_services_load_the_named_block_else_the_env_file(
    prefect_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import services

    from_block = _config(tmp_path, train_deployment="sandboxed-train/from-block")
    ControlPlaneBlock.from_config(from_block).save("tenants-svc", overwrite=True)
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
        # The secret comes from the worker's environment, never from the block (issue 17).
        assert services.current().ledger_passphrase() == b"pw-from-env"
        assert os.environ["CYXWIZ_LEDGER_PASSPHRASE"] == "pw-from-env"
    finally:
        services.reset()
    with pytest.raises(ConfigError) as caught:
        services.ControlPlane.load(environ={})
    assert caught.value.field == "CYXWIZ_CONTROL_PLANE"


@pytest.mark.parametrize("field", ["ledger_config", "pki_root", "trust_policy"])
def test_a_block_rewritten_to_another_accounts_files_is_refused(
    prefect_server: object, tmp_path: Path, field: str
) -> None:
    """Attack: an API client (the coordinator's account) rewrites the block to point the control plane at
    a file it wrote; the plane is not built from it. Positive control: the plane's own files load (F1)."""
    from tasks import services

    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    ControlPlaneBlock.from_config(_config(own)).save("tenants-paths", overwrite=True)
    assert services.ControlPlane.load("tenants-paths", environ={}).config.home == own

    foreign = tmp_path / "coordinator"
    foreign.mkdir(mode=0o700)
    (foreign / "evil").write_text("{}", encoding="utf-8")
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)  # another account's directory, as on a production host
    else:
        foreign.chmod(0o777)  # not root: a directory others can write stands for it
    ControlPlaneBlock.from_config(_config(own, **{field: foreign / "evil"})).save(
        "tenants-paths", overwrite=True
    )
    with pytest.raises(ConfigError) as caught:
        services.ControlPlane.load("tenants-paths", environ={})
    assert caught.value.field == field and caught.value.rule == "F1"
    assert "its own account controls" in str(caught.value)
    with pytest.raises(ConfigError, match="absolute"):
        ControlPlaneBlock.from_config(_config(own, audit_dir=Path("rel/audit"))).save(
            "tenants-rel", overwrite=True
        )
        services.ControlPlane.load("tenants-rel", environ={})


def test_a_group_writable_path_passes_only_when_the_group_is_this_accounts_own(tmp_path: Path) -> None:
    """A clone made under umask 002 with user-private groups is group-writable: ``make demo`` must still
    run from it (the README's "any directory"). Positive control: 0770 in this account's own group loads.
    Attack: the same directory in a group another account is in (nogroup, 65534) is refused (F1)."""
    from tasks.config import check_trusted_paths

    home = tmp_path / "clone"
    home.mkdir()
    home.chmod(0o770)
    check_trusted_paths(_config(home, pki_root=home / "pki"), source="block")  # own group: accepted
    if os.geteuid() != 0:
        pytest.skip("changing a directory's group to another account's needs root")
    os.chown(home, -1, 65534)
    with pytest.raises(ConfigError) as caught:
        check_trusted_paths(_config(home, pki_root=home / "pki"), source="block")
    assert caught.value.field == "home" and caught.value.rule == "F1"
