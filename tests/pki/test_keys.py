"""Key files: Ed25519 PKCS#8 only, 0600 from the first byte, refusals with the conversion hint (A2, A4)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cyxwiz.errors import ConflictError, KeyFormatError, KeyPermissionError, KeyTypeError
from cyxwiz.pki import _files
from cyxwiz.pki.keys import generate_ed25519, load_private_key, public_key_raw, write_private_key

_P = serialization


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask: the key must still come out 0600 (we never rely on the umask)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_written_key_is_0600_and_loads(tmp_path: Path, open_umask: None) -> None:
    key = generate_ed25519()
    path = tmp_path / "key.pem"
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_raw(load_private_key(path)) == public_key_raw(key)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_key_file_is_never_created_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is born 0600 with O_EXCL|O_NOFOLLOW: there is no instant where others could open it."""
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: object, flags: int, mode: int = 0o777, *args: object, **kw: object) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(_files.os, "open", spy)
    write_private_key(tmp_path / "k.pem", generate_ed25519())
    flags, mode = calls[0]
    assert mode == 0o600
    assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    first = generate_ed25519()
    write_private_key(path, first)
    with pytest.raises(ConflictError, match="refusing to overwrite"):
        write_private_key(path, generate_ed25519())
    assert public_key_raw(load_private_key(path)) == public_key_raw(first)
    second = generate_ed25519()
    write_private_key(path, second, overwrite=True)
    assert public_key_raw(load_private_key(path)) == public_key_raw(second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_refuses_to_follow_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "key.pem").symlink_to(target)
    with pytest.raises(ConflictError):
        write_private_key(tmp_path / "key.pem", generate_ed25519())
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o700 | 0o004])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key.pem"
    write_private_key(path, generate_ed25519())
    path.chmod(mode)
    with pytest.raises(KeyPermissionError, match=r"group/others must have no access") as err:
        load_private_key(path)
    assert err.value.path == str(path)
    assert err.value.rule == "A4"
    assert err.value.hint == f"chmod 600 {path}"


@pytest.mark.parametrize(
    ("make", "label"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "PKCS#1"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "SEC1"),
    ],
)
def test_traditional_formats_refused_with_conversion_hint(tmp_path: Path, make: object, label: str) -> None:
    key = make()  # type: ignore[operator]
    data = key.private_bytes(_P.Encoding.PEM, _P.PrivateFormat.TraditionalOpenSSL, _P.NoEncryption())
    path = _write(tmp_path / "trad.pem", data)
    with pytest.raises(KeyFormatError, match=label) as err:
        load_private_key(path)
    assert "openssl pkcs8 -topk8" in str(err.value)
    assert str(path) in str(err.value) and "[rule A2]" in str(err.value)


def test_openssh_format_refused(tmp_path: Path) -> None:
    data = generate_ed25519().private_bytes(_P.Encoding.PEM, _P.PrivateFormat.OpenSSH, _P.NoEncryption())
    with pytest.raises(KeyFormatError, match="OpenSSH"):
        load_private_key(_write(tmp_path / "id_ed25519", data))


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDSA"),
    ],
)
def test_non_ed25519_pkcs8_refused(tmp_path: Path, make: object, name: str) -> None:
    key = make()  # type: ignore[operator]
    data = key.private_bytes(_P.Encoding.PEM, _P.PrivateFormat.PKCS8, _P.NoEncryption())
    with pytest.raises(KeyTypeError, match=f"{name} private key refused: only Ed25519"):
        load_private_key(_write(tmp_path / "k.pem", data))


_BROKEN_PKCS8 = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("data", [b"", b"hello", _BROKEN_PKCS8])
def test_garbage_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(KeyFormatError):
        load_private_key(_write(tmp_path / "k.pem", data))


def test_der_refused(tmp_path: Path) -> None:
    der = generate_ed25519().private_bytes(_P.Encoding.DER, _P.PrivateFormat.PKCS8, _P.NoEncryption())
    with pytest.raises(KeyFormatError, match="not a PKCS#8 PEM"):
        load_private_key(_write(tmp_path / "k.der", der))


def test_passphrase_encrypted_pkcs8(tmp_path: Path) -> None:
    path = tmp_path / "ca-key.pem"
    key = generate_ed25519()
    write_private_key(path, key, passphrase=b"correct horse")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert public_key_raw(load_private_key(path, passphrase=b"correct horse")) == public_key_raw(key)
    with pytest.raises(KeyFormatError, match="no passphrase was given") as err:
        load_private_key(path)
    assert err.value.field == "passphrase"
    with pytest.raises(KeyFormatError, match="wrong passphrase"):
        load_private_key(path, passphrase=b"wrong")


def test_openssl_interop(tmp_path: Path) -> None:
    """openssl genpkey's Ed25519 key loads; openssl reads ours (Hypha troubleshooting commands)."""
    theirs = tmp_path / "theirs.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(theirs)], check=True)
    theirs.chmod(0o600)
    load_private_key(theirs)
    ours = tmp_path / "ours.pem"
    write_private_key(ours, generate_ed25519())
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(ours), "-noout", "-text"], capture_output=True, check=True
    )
    assert b"ED25519 Private-Key" in out.stdout
    # An RSA key converted the way the hint says is PKCS#8 but still refused for its type.
    rsa_trad = tmp_path / "rsa.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(rsa_trad), "2048"], check=True, capture_output=True
    )
    rsa_trad.chmod(0o600)
    with pytest.raises(KeyFormatError, match="PKCS#1"):
        load_private_key(rsa_trad)
    converted = tmp_path / "rsa.pkcs8.pem"
    subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(rsa_trad), "-out", str(converted)], check=True
    )
    converted.chmod(0o600)
    with pytest.raises(KeyTypeError):
        load_private_key(converted)
