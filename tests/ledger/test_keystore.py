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
