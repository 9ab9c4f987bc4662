"""Ledger configuration file and the factory that opens an EscrowLedger from it.

The file (JSON, written by ``provision_demo`` or by an operator) holds only public data and paths: the
RPC URL, the database URL, mint, multisigs, minimum payment, where the sealed key files are, the verifier
service's socket and the trust anchors of verifier reports.

Authority is split (F1): each authority key is sealed under its own passphrase and opened by its own
process — the control plane (payer + coordinator, ``CYXWIZ_LEDGER_PASSPHRASE``), the verifier service
(``CYXWIZ_VERIFIER_PASSPHRASE``), the arbiter's admin tool (``CYXWIZ_ARBITER_PASSPHRASE``).
:func:`open_ledger` opens at most one authority key and reaches the verifier through its socket.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyxwiz.errors import ConfigError

if TYPE_CHECKING:
    from solders.keypair import Keypair
    from solders.pubkey import Pubkey

    from cyxwiz.audit import AuditSink
    from cyxwiz.keys.solana import SourceSigner
    from cyxwiz.ledger.attestation import AttestationPolicy
    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.stake import StakePolicy

CONFIG_ENV = "CYXWIZ_LEDGER_CONFIG"
ROLES = ("payer", "coordinator", "verifier", "arbiter")
#: which env var holds the passphrase of each role's key file (one per process that holds it)
PASSPHRASE_ENVS = {
    "payer": "CYXWIZ_LEDGER_PASSPHRASE",
    "coordinator": "CYXWIZ_LEDGER_PASSPHRASE",
    "user": "CYXWIZ_LEDGER_PASSPHRASE",
    "node": "CYXWIZ_LEDGER_PASSPHRASE",
    "verifier": "CYXWIZ_VERIFIER_PASSPHRASE",
    "arbiter": "CYXWIZ_ARBITER_PASSPHRASE",
}


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
    #: the 2-of-2 (arbiter, verifier) multisig that owns disputed funds
    dispute_multisig: str | None = None
    #: the verifier service's Unix socket; its ``verifier`` certificate and key (the service's own files)
    verifier_socket: str | None = None
    verifier_cert: str | None = None
    verifier_key: str | None = None
    #: the verifier service's own verdict book (SQLite, 0600); default: beside its socket
    verifier_db: str | None = None
    #: CA bundle and CRL that verifier-report certificates are checked against
    trust_bundle: str | None = None
    crl: str | None = None
    #: confirmation level a transaction must reach: "confirmed" or "finalized" (never "processed")
    commitment: str = "confirmed"
    #: node stake: minimum to be dispatched to (0: no minimum), slash share (basis points), cool-down
    minimum_stake: int = 0
    slash_bps: int = 2500
    stake_cooldown_s: int = 86400
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
        if config.commitment not in ("confirmed", "finalized"):
            raise ConfigError(
                "must be 'confirmed' or 'finalized'", field="commitment", path=str(path), rule="F2"
            )
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

    def _path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def key_path(self, role: str) -> Path | None:
        return self._path(self.keys.get(role))

    def verifier_socket_path(self) -> Path | None:
        return self._path(self.verifier_socket)

    def attestation_policy(self) -> AttestationPolicy | None:
        from cyxwiz.ledger.attestation import AttestationPolicy

        bundle = self._path(self.trust_bundle)
        if bundle is None:
            return None
        crl = self._path(self.crl)
        return AttestationPolicy.from_files(bundle, crls=[crl] if crl else [])

    def stake_policy(self) -> StakePolicy:
        import datetime as dt

        from cyxwiz.ledger.stake import StakePolicy, parse_share

        return StakePolicy(
            minimum=self.minimum_stake,
            slash_bps=parse_share(self.slash_bps),
            cooldown=dt.timedelta(seconds=self.stake_cooldown_s),
        )

    def pubkey(self, role: str) -> Pubkey:
        """A role's public key from its key file (or token), without any passphrase."""
        from solders.pubkey import Pubkey

        from cyxwiz.keys import is_pkcs11_uri
        from cyxwiz.ledger.keystore import read_pubkey

        if is_pkcs11_uri(self.keys.get(role, "")):
            return self.load_key(role).pubkey()
        path = self.key_path(role)
        if path is None:
            raise ConfigError("ledger config names no key file for this role", field=f"keys.{role}")
        return Pubkey.from_string(read_pubkey(path))

    def load_key(self, role: str, *, passphrase: bytes | None = None) -> Keypair | SourceSigner:
        """Unseal one role's key with that role's own passphrase (argument, else its env var); a
        ``pkcs11:`` URI opens the token's key instead, which signs the message itself (A7, F1)."""
        from cyxwiz.keys import is_pkcs11_uri
        from cyxwiz.ledger.keystore import load_keypair, passphrase_from_env

        if is_pkcs11_uri(self.keys.get(role, "")):
            from cyxwiz.keys import open_key_source
            from cyxwiz.keys.solana import SourceSigner

            return SourceSigner(open_key_source(self.keys[role]))
        path = self.key_path(role)
        if path is None:
            raise ConfigError("ledger config names no key file for this role", field=f"keys.{role}")
        secret = (
            passphrase
            if passphrase is not None
            else passphrase_from_env(PASSPHRASE_ENVS.get(role, PASSPHRASE_ENVS["payer"]))
        )
        return load_keypair(path, passphrase=secret)


def open_ledger(
    config: LedgerConfig,
    *,
    passphrase: bytes | None = None,
    roles: tuple[str, ...] = ("coordinator",),
    audit: AuditSink | None = None,
    **kwargs: Any,
) -> EscrowLedger:
    """An EscrowLedger over JSON-RPC holding at most ONE authority key (F1, threat I).

    ``roles=("coordinator",)`` is the control plane (payer + coordinator key); ``("arbiter",)`` is the
    admin's dispute tool (the arbiter key pays its own fees); ``()`` signs nothing but fees. The verifier's
    co-signature always comes from the verifier service over its socket. ``passphrase`` overrides the
    role's passphrase env var.
    """
    from solders.pubkey import Pubkey

    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.rpc import RpcChain
    from cyxwiz.ledger.store import EscrowStore

    authorities = [r for r in roles if r in ("coordinator", "verifier", "arbiter")]
    if len(authorities) > 1 or "verifier" in authorities:
        raise ConfigError(
            "one process holds at most one escrow authority key, and never the verifier's "
            f"(asked for {', '.join(authorities)})",
            field="roles",
            rule="F1",
            hint="the verifier co-signs through its own service; the arbiter uses its own tool",
        )
    arbiter = "arbiter" in authorities
    payer = config.load_key("arbiter" if arbiter else "payer", passphrase=passphrase)
    socket_path = config.verifier_socket_path()
    verifier: Any = None
    if socket_path is not None:
        from cyxwiz.ledger.verifier_client import RemoteCosigner

        verifier = RemoteCosigner(socket_path=socket_path, pubkey=config.pubkey("verifier"))
    return EscrowLedger(
        chain=RpcChain(url=config.rpc_url, commitment=config.commitment),
        store=EscrowStore.open(config.db_url),
        mint=Pubkey.from_string(config.mint),
        decimals=config.decimals,
        multisig=Pubkey.from_string(config.multisig),
        payer=payer,
        rent_owner=config.pubkey("payer"),
        coordinator=config.load_key("coordinator", passphrase=passphrase)
        if "coordinator" in authorities
        else None,
        verifier=verifier,
        arbiter=payer if arbiter else None,
        attestations=config.attestation_policy(),
        dispute_multisig=Pubkey.from_string(config.dispute_multisig) if config.dispute_multisig else None,
        minimum_payment=config.minimum_payment,
        stake_policy=config.stake_policy(),
        audit=audit,
        **kwargs,
    )
