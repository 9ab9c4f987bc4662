"""Envelope encryption: AES-256-GCM chunks under a per-object data key wrapped by the master key (D2)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from cyxwiz.errors import ConfigError, DecryptionError, KeyPermissionError
from cyxwiz.storage.crypto import (
    HEADER_LEN,
    TAG_LEN,
    Envelope,
    MasterKey,
    decrypt_bytes,
    decrypt_iter,
    encrypt_bytes,
    encrypt_stream,
    encrypted_size,
)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 101, 200, 1000])
def test_round_trip_chunk_boundaries(size: int) -> None:
    master = MasterKey.generate()
    data = os.urandom(size)
    env = Envelope.new(chunk_size=100)
    blob = encrypt_bytes(data, master=master, object_key="k", envelope=env)
    assert len(blob) == encrypted_size(size, 100)
    assert decrypt_bytes(blob, master=master, object_key="k") == data
    # Fed one byte at a time, the streaming decryptor gives the same answer.
    assert (
        b"".join(decrypt_iter((blob[i : i + 1] for i in range(len(blob))), master=master, object_key="k"))
        == data
    )


def test_ciphertext_hides_plaintext_and_is_fresh_per_object() -> None:
    master = MasterKey.generate()
    data = b"model weights " * 100
    a = encrypt_bytes(data, master=master, object_key="k")
    b = encrypt_bytes(data, master=master, object_key="k")
    assert data[:32] not in a
    assert a != b  # a new data key and nonce per object


def test_same_envelope_encrypts_identically() -> None:
    # put_file relies on this: pass one hashes, pass two uploads the very same bytes.
    master = MasterKey.generate()
    env = Envelope.new(chunk_size=64)
    data = os.urandom(500)
    one = b"".join(
        c for _, c in encrypt_stream(io.BytesIO(data), master=master, object_key="k", envelope=env)
    )
    two = b"".join(
        c for _, c in encrypt_stream(io.BytesIO(data), master=master, object_key="k", envelope=env)
    )
    assert one == two


def test_wrong_master_key_refused() -> None:
    blob = encrypt_bytes(b"secret", master=MasterKey.generate(), object_key="k")
    with pytest.raises(DecryptionError, match="encrypted under master key"):
        decrypt_bytes(blob, master=MasterKey.generate(), object_key="k")


def test_body_moved_to_another_key_refused() -> None:
    master = MasterKey.generate()
    blob = encrypt_bytes(b"secret", master=master, object_key="jobs/a/outputs/m")
    with pytest.raises(DecryptionError, match="does not unwrap"):
        decrypt_bytes(blob, master=master, object_key="jobs/b/outputs/m")


def test_wrong_data_key_refused() -> None:
    # Splice another object's wrapped data key (valid under the same master key) into this header.
    master = MasterKey.generate()
    a = bytearray(encrypt_bytes(b"A" * 50, master=master, object_key="k"))
    b = encrypt_bytes(b"B" * 50, master=master, object_key="k")
    a[16:76] = b[16:76]  # wrap nonce + wrapped key
    with pytest.raises(DecryptionError, match="fails authentication"):
        decrypt_bytes(bytes(a), master=master, object_key="k")


def test_truncation_reordering_and_flips_refused() -> None:
    master = MasterKey.generate()
    env = Envelope.new(chunk_size=10)
    blob = encrypt_bytes(bytes(range(30)), master=master, object_key="k", envelope=env)
    frame = 10 + TAG_LEN
    frames = [blob[HEADER_LEN + i * frame : HEADER_LEN + (i + 1) * frame] for i in range(3)]
    header = blob[:HEADER_LEN]
    attacks = {
        "drop last frame": header + frames[0] + frames[1],
        "swap frames": header + frames[1] + frames[0] + frames[2],
        "header only": header,
        "short": blob[:10],
        "flip": blob[:-1] + bytes([blob[-1] ^ 1]),
    }
    for name, body in attacks.items():
        with pytest.raises(DecryptionError):
            decrypt_bytes(body, master=master, object_key="k")
            pytest.fail(name)


def test_master_key_file_permissions(tmp_path: Path) -> None:
    key = MasterKey.generate()
    path = tmp_path / "master.key"
    key.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert MasterKey.from_file(path).key_id == key.key_id
    with pytest.raises(ConfigError):
        key.write(path)  # refuses to overwrite
    path.chmod(0o640)
    with pytest.raises(KeyPermissionError) as err:
        MasterKey.from_file(path)
    assert err.value.path == str(path)


def test_master_key_from_env_and_repr() -> None:
    key = MasterKey.generate()
    hex_key = key._key.hex()
    loaded = MasterKey.from_env({"CYXWIZ_STORE_MASTER_KEY": hex_key})
    assert loaded is not None and loaded.key_id == key.key_id
    assert hex_key not in repr(loaded)  # never printed
    assert MasterKey.from_env({}) is None
    with pytest.raises(ConfigError) as err:
        MasterKey.from_env({"CYXWIZ_STORE_MASTER_KEY": "too-short"})
    assert err.value.field == "CYXWIZ_STORE_MASTER_KEY"
