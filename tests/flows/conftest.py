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
    from cyxwiz.pki.keys import generate_ed25519, write_private_key

    write_private_key(tmp_path / "audit-key.pem", generate_ed25519())
    monkeypatch.setenv("CYXWIZ_AUDIT_SIGNING_KEY", str(tmp_path / "audit-key.pem"))
    monkeypatch.delenv("CYXWIZ_AUDIT_PUBLIC_KEY", raising=False)
    services.reset()
    yield config
    services.reset()
