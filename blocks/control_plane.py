"""The trusted zone's configuration as one typed Prefect block (the prefect-aws idiom: ``Block.load(name)``).

``make demo`` saves ``ControlPlaneBlock`` as ``default``; the lifecycle and maintenance flows load the block
named by ``CYXWIZ_CONTROL_PLANE_BLOCK`` and fall back to the ``CYXWIZ_CONTROL_PLANE`` file and env vars
when none is named (:meth:`tasks.services.ControlPlane.load`). Secrets (the ledger key passphrase, the
object store's master key, a database URL that may carry a password) are ``SecretStr``: the UI and logs
show asterisks, and they reach the core only as plain values handed to the parts the loading process
opens (never exported into its environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from cyxwiz.storage.crypto import MASTER_KEY_ENV

BLOCK_ENV = "CYXWIZ_CONTROL_PLANE_BLOCK"
#: The name ``make demo`` saves.
DEFAULT_NAME = "default"
LEDGER_PASSPHRASE_ENV = "CYXWIZ_LEDGER_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


class ControlPlaneBlock(Block):
    """Where the control plane's parts live and the secrets that open them (SPEC D2, F1, H3)."""

    _block_type_name = "cyxwiz control plane"
    _block_type_slug = "cyxwiz-control-plane"
    _description = (
        "PKI, ledger config, object store, audit log, coordinator database and key ring of the trusted "
        "zone, with the passphrase and master key that open them."
    )

    home: Path = Field(description="Control-plane state directory.")
    pki_root: Path = Field(description="CA directory (bundle, CRL, node certificates).")
    ledger_config: Path = Field(description="Ledger config JSON (RPC URL, mint, multisig, key files).")
    store_root: Path = Field(description="Local object store root.")
    audit_dir: Path = Field(description="Audit log directory.")
    coordinator_url: str | None = Field(default=None, description="Coordinator API URL.")
    coordinator_db: SecretStr | None = Field(
        default=None, description="Coordinator database URL (may carry a password)."
    )
    keyring_dir: Path | None = Field(default=None, description="Token key ring directory (rotation flow).")
    train_deployment: str = Field(default="sandboxed-train/sandboxed-train")
    trust_policy: Path | None = Field(default=None, description="Federation trust policy (YAML).")
    issuer_socket: Path | None = Field(default=None, description="Issuer service socket (CRL refresh).")
    dispatch_margin_s: int = Field(default=120, ge=0, le=86400)
    ledger_passphrase: SecretStr | None = Field(
        default=None, description="Passphrase of the ledger's sealed authority keys."
    )
    store_master_key: SecretStr | None = Field(
        default=None, description="Master key of the object store's envelope encryption."
    )

    @classmethod
    def from_config(
        cls, config: Any, *, ledger_passphrase: str | None = None, store_master_key: str | None = None
    ) -> ControlPlaneBlock:
        """From a :class:`tasks.config.ControlPlaneConfig` (duck-typed: blocks depend on the core only)."""
        return cls(
            home=config.home,
            pki_root=config.pki_root,
            ledger_config=config.ledger_config,
            store_root=config.store_root,
            audit_dir=config.audit_dir,
            coordinator_url=config.coordinator_url,
            coordinator_db=SecretStr(config.coordinator_db) if config.coordinator_db else None,
            keyring_dir=config.keyring_dir,
            train_deployment=config.train_deployment,
            dispatch_margin_s=config.dispatch_margin_s,
            trust_policy=getattr(config, "trust_policy", None),
            issuer_socket=getattr(config, "issuer_socket", None),
            ledger_passphrase=SecretStr(ledger_passphrase) if ledger_passphrase else None,
            store_master_key=SecretStr(store_master_key) if store_master_key else None,
        )

    def config_values(self) -> dict[str, Any]:
        """The keyword arguments of :class:`tasks.config.ControlPlaneConfig`."""
        return {
            "home": self.home,
            "pki_root": self.pki_root,
            "ledger_config": self.ledger_config,
            "store_root": self.store_root,
            "audit_dir": self.audit_dir,
            "coordinator_url": self.coordinator_url,
            "coordinator_db": self.coordinator_db.get_secret_value() if self.coordinator_db else None,
            "keyring_dir": self.keyring_dir,
            "train_deployment": self.train_deployment,
            "dispatch_margin_s": self.dispatch_margin_s,
            "trust_policy": self.trust_policy,
            "issuer_socket": self.issuer_socket,
        }

    def secret_env(self) -> dict[str, str]:
        """The secrets under the env names the core reads, for the loading process only; never logged."""
        env: dict[str, str] = {}
        if self.ledger_passphrase is not None:
            env[LEDGER_PASSPHRASE_ENV] = self.ledger_passphrase.get_secret_value()
        if self.store_master_key is not None:
            env[MASTER_KEY_ENV] = self.store_master_key.get_secret_value()
        return env


def load_control_plane(name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``ControlPlaneBlock.load(name)`` as (config values, secret env)."""
    block = ControlPlaneBlock.load(name)
    assert isinstance(block, ControlPlaneBlock)  # a sync load returns the block itself
    return block.config_values(), block.secret_env()
