"""Maintenance flows against a real Prefect server: idempotent, and they change what they should."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from pathlib import Path

import pytest

from cyxwiz.audit import events
from cyxwiz.errors import ConfigError
from cyxwiz.issuer.service import start_issuer_service
from cyxwiz.pki.certs import load_crls
from flows.maintenance import audit_maintenance, certificate_expiry_watch, crl_refresh, signing_key_rotation
from tasks import services
from tasks.config import ENV_VAR, ControlPlaneConfig

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_crl_refresh_resigns_only_when_due(
    prefect_server: object, control_plane: ControlPlaneConfig, tmp_path: Path
) -> None:
    crl_path = control_plane.pki_root / "ca" / "ca-crl.pem"
    before = load_crls(crl_path)[0]
    # The control plane holds no CA key (issue 17): a due CRL without the issuer service is named, unsigned.
    with pytest.raises(ConfigError) as info:
        crl_refresh(days=7, refresh_before_hours=24 * 30)
    assert info.value.field == "issuer_socket" and load_crls(crl_path)[0] == before
    with start_issuer_service(
        ca_dir=control_plane.pki_root / "ca", state_dir=tmp_path / "issuer", env=dict(os.environ)
    ) as issuer:
        replace(control_plane, issuer_socket=issuer.socket_path).to_file(Path(os.environ[ENV_VAR]))
        services.reset()
        first = crl_refresh(days=7, refresh_before_hours=24 * 30)  # everything is "due" within 30 days
    assert first["refreshed"] is True
    after = load_crls(crl_path)[0]
    assert after.next_update_utc is not None
    assert before.next_update_utc is not None
    assert after.last_update_utc >= before.last_update_utc
    second = crl_refresh(days=7, refresh_before_hours=1)
    assert second["refreshed"] is False


def test_audit_maintenance_verifies_the_chain(
    prefect_server: object, control_plane: ControlPlaneConfig
) -> None:
    log = services.audit()
    log.record(events.auth_attempt(actor_id="node-1", actor_type="node", success=True, method="mtls"))
    result = audit_maintenance()
    assert result["chain_ok"] is True


def test_audit_maintenance_fails_loudly_on_tampering(
    prefect_server: object, control_plane: ControlPlaneConfig
) -> None:
    log = services.audit()
    for n in range(3):
        log.record(events.auth_attempt(actor_id=f"node-{n}", actor_type="node", success=True, method="mtls"))
    log.close()
    services.reset()
    day_file = next(control_plane.audit_dir.glob("audit-????-??-??.jsonl"))
    lines = day_file.read_bytes().splitlines(keepends=True)
    day_file.write_bytes(b"".join([lines[0], lines[2]]))  # delete the middle record
    state = audit_maintenance(return_state=True)
    assert state.is_failed()
    assert "audit chain broken" in str(state.message) or state.is_failed()


def test_signing_key_rotation(prefect_server: object, control_plane: ControlPlaneConfig) -> None:
    assert signing_key_rotation()["rotated"] is None  # a fresh key is not due
    forced = signing_key_rotation(force=True)
    assert forced["rotated"]
    from cyxwiz.tokens.keyring import DirKeyRingStore

    assert control_plane.keyring_dir is not None
    ring = DirKeyRingStore(control_plane.keyring_dir).load()
    assert ring.signing_key.kid == forced["rotated"]
    assert len(ring.all_keys()) == 2  # the old public key stays until its tokens expire


def test_certificate_expiry_watch(prefect_server: object, control_plane: ControlPlaneConfig) -> None:
    assert certificate_expiry_watch(warn_days=1)["expiring"] == []
    soon = certificate_expiry_watch(warn_days=100 * 365)["expiring"]
    assert any(row["subject"] for row in soon)
    assert all(row["days_left"] < 100 * 365 for row in soon)
    assert dt.datetime.now(dt.UTC)  # the watch never raises for expiring certs; it warns
