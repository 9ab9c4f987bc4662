"""Wallet and escrow-authority keys encrypted at rest (SPEC D2).

A key file is JSON: the public key in clear (so configs can be checked without the passphrase), the
Argon2id parameters and salt, and the 64-byte Solana secret sealed with AES-256-GCM under the
Argon2id-derived key; the public key and the KDF parameters are the AEAD's associated data, so editing
either makes decryption fail. Files are written 0600 atomically and refused when group/other can read
them. Secrets never appear in messages or reprs.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from solders.keypair import Keypair

from cyxwiz.errors import ConfigError, DecryptionError, KeyFormatError, KeyPermissionError

FORMAT = "cyxwiz-solana-key"
PASSPHRASE_ENV = "CYXWIZ_LEDGER_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. The default follows RFC 9106's second recommendation (64 MiB, t=3)."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 1

    @classmethod
    def fast_for_tests(cls) -> KdfParams:
        """Cheap parameters for tests and throwaway demo keys only."""
        return cls(time_cost=1, memory_kib=8 * 1024, parallelism=1)


def passphrase_setting(
    env: str = PASSPHRASE_ENV, *, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The passphrase in ``env``, else in the 0600/0400 file ``env``_FILE names, else None.

    The file form is how systemd hands it over (``LoadCredential=`` then ``..._FILE=%d/NAME``): PID 1
    reads the root-only source, and the secret is in no environment block another process could read.
    """
    values = os.environ if environ is None else environ
    value = values.get(env)
    if value:
        return value.encode()
    file_var = f"{env}_FILE"
    name = values.get(file_var)
    if not name:
        return None
    path = Path(name)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError("passphrase file not found", field=file_var, path=str(path), rule="D2") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyPermissionError(
            f"passphrase file mode is {stat.S_IMODE(mode):04o}; group or others can read it",
            field=file_var, path=str(path), rule="D2", hint=f"chmod 600 {path}",
        )  # fmt: skip
    secret = path.read_bytes().rstrip(b"\r\n")
    if not secret:
        raise ConfigError("passphrase file is empty", field=file_var, path=str(path), rule="D2")
    return secret


def passphrase_from_env(env: str = PASSPHRASE_ENV) -> bytes:
    secret = passphrase_setting(env)
    if secret is None:
        raise ConfigError(
            "no passphrase for the ledger key files", field=env, rule="D2",
            hint=f"export {env}=... or {env}_FILE=<0600 file>",
        )  # fmt: skip
    return secret


def _derive(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=32,
        type=Type.ID,
    )


def _aad(pubkey: str, params: KdfParams) -> bytes:
    return f"{FORMAT}|1|{pubkey}|{params.time_cost}|{params.memory_kib}|{params.parallelism}".encode()


def write_keypair(
    path: Path,
    keypair: Keypair,
    *,
    passphrase: bytes,
    params: KdfParams | None = None,
    overwrite: bool = False,
) -> None:
    """Seal ``keypair`` into ``path`` (0600, atomic). Refuses to replace an existing file unless asked."""
    if not passphrase:
        raise ConfigError("empty passphrase", field="passphrase", rule="D2")
    if path.exists() and not overwrite:
        raise ConfigError("key file exists; refusing to overwrite", path=str(path), rule="D2")
    params = params or KdfParams()
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    pubkey = str(keypair.pubkey())
    sealed = AESGCM(_derive(passphrase, salt, params)).encrypt(nonce, bytes(keypair), _aad(pubkey, params))
    document = {
        "format": FORMAT,
        "version": 1,
        "pubkey": pubkey,
        "kdf": {
            "alg": "argon2id",
            "time_cost": params.time_cost,
            "memory_kib": params.memory_kib,
            "parallelism": params.parallelism,
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": "aes-256-gcm",
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_document(path: Path) -> dict[str, object]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError("key file not found", path=str(path), rule="D2") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyPermissionError(
            "key file is accessible by group or others", path=str(path), rule="D2", hint=f"chmod 600 {path}"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyFormatError(
            f"not a cyxwiz key file ({type(exc).__name__})", path=str(path), rule="D2"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != 1:
        raise KeyFormatError("not a cyxwiz key file (format/version)", path=str(path), rule="D2")
    return document


def read_pubkey(path: Path) -> str:
    """The public key of a sealed key file, without the passphrase."""
    return str(_read_document(path)["pubkey"])


def load_keypair(path: Path, *, passphrase: bytes) -> Keypair:
    """Open a sealed key file. Wrong passphrase or an edited file: DecryptionError (no detail leaks)."""
    document = _read_document(path)
    try:
        kdf = document["kdf"]
        assert isinstance(kdf, dict)
        if kdf["alg"] != "argon2id" or document["cipher"] != "aes-256-gcm":
            raise KeyFormatError("unsupported KDF or cipher", path=str(path), rule="D2")
        params = KdfParams(int(kdf["time_cost"]), int(kdf["memory_kib"]), int(kdf["parallelism"]))
        salt = base64.b64decode(str(kdf["salt"]), validate=True)
        nonce = base64.b64decode(str(document["nonce"]), validate=True)
        sealed = base64.b64decode(str(document["ciphertext"]), validate=True)
        pubkey = str(document["pubkey"])
    except KeyFormatError:
        raise
    except (KeyError, ValueError, TypeError, AssertionError):
        raise KeyFormatError(
            "key file is missing or has malformed fields", path=str(path), rule="D2"
        ) from None
    if params.memory_kib < 8 * 1024 or params.time_cost < 1:
        raise KeyFormatError("key file's Argon2 parameters are below the minimum", path=str(path), rule="D2")
    try:
        secret = AESGCM(_derive(passphrase, salt, params)).decrypt(nonce, sealed, _aad(pubkey, params))
    except InvalidTag:
        raise DecryptionError(
            "cannot decrypt key file (wrong passphrase or the file was altered)", path=str(path), rule="D2"
        ) from None
    keypair = Keypair.from_bytes(secret)
    if str(keypair.pubkey()) != pubkey:
        raise KeyFormatError("sealed key does not match its public key", path=str(path), rule="D2")
    return keypair
