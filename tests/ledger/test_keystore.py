"""Wallet/authority keys encrypted at rest (D2): Argon2id + AES-256-GCM, 0600, tamper-evident."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from solders.keypair import Keypair

from cyxwiz.errors import ConfigError, DecryptionError, KeyFormatError, KeyPermissionError
from cyxwiz.ledger.keystore import KdfParams, load_keypair, read_pubkey, write_keypair

FAST = KdfParams.fast_for_tests()


def test_round_trip_file_is_0600_and_holds_no_plain_secret(tmp_path: Path) -> None:
    key = Keypair()
    path = tmp_path / "coordinator.key"
    write_keypair(path, key, passphrase=b"pw", params=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert bytes(key)[:32] not in raw and base64.b64encode(bytes(key)) not in raw
    assert read_pubkey(path) == str(key.pubkey())
    assert load_keypair(path, passphrase=b"pw") == key


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_keypair(path, Keypair(), passphrase=b"right", params=FAST)
    with pytest.raises(DecryptionError, match="wrong passphrase or the file was altered"):
        load_keypair(path, passphrase=b"wrong")


def test_swapped_public_key_is_detected(tmp_path: Path) -> None:
    """An attacker edits the clear pubkey so configs point at their wallet: the AEAD refuses."""
    path = tmp_path / "k.key"
    write_keypair(path, Keypair(), passphrase=b"pw", params=FAST)
    doc = json.loads(path.read_text())
    doc["pubkey"] = str(Keypair().pubkey())
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    with pytest.raises(DecryptionError):
        load_keypair(path, passphrase=b"pw")


def test_weakened_kdf_parameters_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_keypair(path, Keypair(), passphrase=b"pw", params=FAST)
    doc = json.loads(path.read_text())
    doc["kdf"]["memory_kib"] = 64
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    with pytest.raises(KeyFormatError, match="below the minimum"):
        load_keypair(path, passphrase=b"pw")


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_keypair(path, Keypair(), passphrase=b"pw", params=FAST)
    path.chmod(0o640)
    with pytest.raises(KeyPermissionError, match="group or others"):
        load_keypair(path, passphrase=b"pw")


def test_garbage_and_overwrite_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_text("not json")
    path.chmod(0o600)
    with pytest.raises(KeyFormatError):
        load_keypair(path, passphrase=b"pw")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_keypair(path, Keypair(), passphrase=b"pw", params=FAST)
    with pytest.raises(ConfigError, match="empty passphrase"):
        write_keypair(tmp_path / "new.key", Keypair(), passphrase=b"", params=FAST)


# The passphrase as a file: how systemd hands it to the control worker (LoadCredential=, issue 17; D2).


def test_passphrase_comes_from_the_file_named_by_its_FILE_variable(tmp_path: Path) -> None:
    from cyxwiz.ledger.keystore import passphrase_setting

    secret = tmp_path / "ledger-passphrase"
    secret.write_bytes(b"s3cret\n")
    secret.chmod(0o400)  # as systemd's credentials are
    env = {"CYXWIZ_LEDGER_PASSPHRASE_FILE": str(secret)}
    assert passphrase_setting(environ=env) == b"s3cret"
    assert passphrase_setting(environ={**env, "CYXWIZ_LEDGER_PASSPHRASE": "direct"}) == b"direct"
    assert passphrase_setting("CYXWIZ_VERIFIER_PASSPHRASE", environ=env) is None, "each role its own"
    path = tmp_path / "k.key"
    write_keypair(path, Keypair(), passphrase=b"s3cret", params=FAST)
    assert load_keypair(path, passphrase=passphrase_setting(environ=env) or b"")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_readable_passphrase_file_is_refused(tmp_path: Path, mode: int) -> None:
    from cyxwiz.ledger.keystore import passphrase_setting

    secret = tmp_path / "ledger-passphrase"
    secret.write_bytes(b"s3cret")
    secret.chmod(mode)
    with pytest.raises(KeyPermissionError, match="group or others can read it") as caught:
        passphrase_setting(environ={"CYXWIZ_LEDGER_PASSPHRASE_FILE": str(secret)})
    assert caught.value.field == "CYXWIZ_LEDGER_PASSPHRASE_FILE"


def test_missing_or_empty_passphrase_file_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cyxwiz.ledger.keystore import passphrase_from_env

    monkeypatch.delenv("CYXWIZ_LEDGER_PASSPHRASE", raising=False)
    monkeypatch.setenv("CYXWIZ_LEDGER_PASSPHRASE_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="passphrase file not found") as caught:
        passphrase_from_env()
    assert caught.value.field == "CYXWIZ_LEDGER_PASSPHRASE_FILE"
    (tmp_path / "empty").write_bytes(b"\n")
    (tmp_path / "empty").chmod(0o600)
    monkeypatch.setenv("CYXWIZ_LEDGER_PASSPHRASE_FILE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="passphrase file is empty"):
        passphrase_from_env()
    monkeypatch.delenv("CYXWIZ_LEDGER_PASSPHRASE_FILE")
    with pytest.raises(ConfigError, match="no passphrase for the ledger key files"):
        passphrase_from_env()
