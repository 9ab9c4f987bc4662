"""A control-plane config in a tmp dir (dev PKI, audit dir, key ring) for flow tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cyxwiz.pki.devpki import build_dev_pki
from tasks import services
from tasks.config import ENV_VAR, ControlPlaneConfig


@pytest.fixture
def control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlaneConfig]:
    from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing

    pki = build_dev_pki(tmp_path / "pki")
    keyring_dir = tmp_path / "keyring"
    DirKeyRingStore(keyring_dir).save(KeyRing.generate())
    config = ControlPlaneConfig(
        home=tmp_path,
        pki_root=pki.root,
        ledger_config=tmp_path / "ledger" / "ledger.json",
        store_root=tmp_path / "store",
        audit_dir=tmp_path / "audit",
        keyring_dir=keyring_dir,
    )
    path = tmp_path / "control-plane.json"
    config.to_file(path)
    monkeypatch.setenv(ENV_VAR, str(path))
    from cyxwiz.storage.crypto import MasterKey

    MasterKey.generate().write(tmp_path / "master.key")
    monkeypatch.setenv("CYXWIZ_STORE_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    monkeypatch.delenv("CYXWIZ_AUDIT_SIGNING_KEY", raising=False)
    services.reset()
    yield config
    services.reset()
