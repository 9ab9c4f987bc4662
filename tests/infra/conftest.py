"""Fixtures of the infra tests: the control plane ``python -m infra.serve`` opens."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A control-plane config, PKI, key ring and store key laid out as the runbook installs them."""
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.pki.keys import generate_ed25519, write_private_key
    from cyxwiz.storage.crypto import MasterKey
    from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing
    from tasks.config import ControlPlaneConfig

    home = tmp_path_factory.mktemp("cp")
    pki = build_dev_pki(home / "pki")
    MasterKey.generate().write(home / "store-master.key")
    write_private_key(home / "audit-key.pem", generate_ed25519())
    DirKeyRingStore(home / "coordinator" / "keyring").save(KeyRing.generate())
    config = home / "control-plane.json"
    ControlPlaneConfig(
        home=home, pki_root=pki.root, ledger_config=home / "ledger.json", store_root=home / "store",
        audit_dir=home / "audit", coordinator_db=f"sqlite:///{home / 'coordinator.db'}",
    ).to_file(config)  # fmt: skip
    return {
        "CYXWIZ_CONTROL_PLANE": str(config),
        "CYXWIZ_CA_BUNDLE": str(pki.bundle),
        "CYXWIZ_CRL": str(pki.crl),
        "CYXWIZ_AUDIT_SIGNING_KEY": str(home / "audit-key.pem"),
        "CYXWIZ_STATE_DIR": str(home / "coordinator"),
        "CYXWIZ_LISTEN_PORT": "0",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "coordinator:CYXWIZ_TLS_CERT": str(pki.coordinator_cert),
        "coordinator:CYXWIZ_TLS_KEY": str(pki.coordinator_key),
        "coordinator:CYXWIZ_STORE_MASTER_KEY_FILE": str(home / "store-master.key"),
        "gateway:CYXWIZ_TLS_CERT": str(pki.gateway_cert),
        "gateway:CYXWIZ_TLS_KEY": str(pki.gateway_key),
        "gateway:CYXWIZ_KEYRING_DIR": str(home / "coordinator" / "keyring"),
    }
