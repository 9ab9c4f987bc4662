"""Ledger configuration file and the factory that opens an EscrowLedger from it.

The file (JSON, written by ``provision_demo`` or by an operator) holds only public data and paths: the
RPC URL, the database URL, mint, multisig, minimum payment and where the sealed key files are. The
passphrase comes from ``CYXWIZ_LEDGER_PASSPHRASE`` (or a Prefect Secret block in flows), never the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyxwiz.errors import ConfigError

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink
    from cyxwiz.ledger.ledger import EscrowLedger

CONFIG_ENV = "CYXWIZ_LEDGER_CONFIG"
ROLES = ("payer", "coordinator", "verifier", "arbiter")


@dataclass(frozen=True)
class LedgerConfig:
    rpc_url: str
    db_url: str
    mint: str
    decimals: int
    multisig: str
    minimum_payment: int
    #: role -> sealed key file (relative paths are relative to the config file's directory), or a
    #: ``pkcs11:`` URI for an authority key kept in a PKCS#11 token
    keys: dict[str, str] = field(default_factory=dict)
    base_dir: str = "."

    @classmethod
    def from_file(cls, path: Path) -> LedgerConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("ledger config not found", path=str(path), hint=f"set {CONFIG_ENV}") from None
        except ValueError as exc:
            raise ConfigError(f"ledger config is not JSON: {exc}", path=str(path)) from None
        if not isinstance(data, dict):
            raise ConfigError("ledger config must be a JSON object", path=str(path))
        try:
            config = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise ConfigError(f"ledger config is missing a field: {exc}", path=str(path)) from None
        for name in ("minimum_payment", "decimals"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError("must be a non-negative integer", field=name, path=str(path), rule="F3")
        return cls(**{**asdict(config), "base_dir": str(path.parent.resolve())})

    @classmethod
    def from_env(cls) -> LedgerConfig:
        value = os.environ.get(CONFIG_ENV)
        if not value:
            raise ConfigError(
                "no ledger config", field=CONFIG_ENV, hint=f"export {CONFIG_ENV}=path/to/ledger.json"
            )
        return cls.from_file(Path(value))

    def to_file(self, path: Path) -> None:
        data = asdict(self)
        data.pop("base_dir")
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def key_path(self, role: str) -> Path | None:
        value = self.keys.get(role)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else Path(self.base_dir) / path


def open_ledger(
    config: LedgerConfig,
    *,
    passphrase: bytes | None = None,
    roles: tuple[str, ...] = ("coordinator", "verifier"),
    audit: AuditSink | None = None,
    **kwargs: Any,
) -> EscrowLedger:
    """An EscrowLedger over JSON-RPC holding only the authority keys named in ``roles`` (plus the payer)."""
    from solders.pubkey import Pubkey

    from cyxwiz.keys import is_pkcs11_uri
    from cyxwiz.ledger.keystore import load_keypair, passphrase_from_env
    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.rpc import RpcChain
    from cyxwiz.ledger.store import EscrowStore

    keys: dict[str, Any] = {}
    for role in roles:
        # An authority key kept in a PKCS#11 token: the token signs the transaction message (A7, F1).
        if is_pkcs11_uri(config.keys.get(role, "")):
            from cyxwiz.keys import open_key_source
            from cyxwiz.keys.solana import SourceSigner

            keys[role] = SourceSigner(open_key_source(config.keys[role]))
    secret = passphrase if passphrase is not None else passphrase_from_env()
    for role in {"payer", *roles} - set(keys):
        path = config.key_path(role)
        if path is None:
            raise ConfigError("ledger config names no key file for this role", field=f"keys.{role}")
        keys[role] = load_keypair(path, passphrase=secret)
    return EscrowLedger(
        chain=RpcChain(url=config.rpc_url),
        store=EscrowStore.open(config.db_url),
        mint=Pubkey.from_string(config.mint),
        decimals=config.decimals,
        multisig=Pubkey.from_string(config.multisig),
        payer=keys["payer"],
        coordinator=keys.get("coordinator"),
        verifier=keys.get("verifier"),
        arbiter=keys.get("arbiter"),
        minimum_payment=config.minimum_payment,
        audit=audit,
        **kwargs,
    )
