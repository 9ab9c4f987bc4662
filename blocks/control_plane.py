"""The trusted zone's configuration as one typed Prefect block (the prefect-aws idiom: ``Block.load(name)``).

``make demo`` saves ``ControlPlaneBlock`` as ``default``; the lifecycle and maintenance flows load the block
named by ``CYXWIZ_CONTROL_PLANE_BLOCK`` and fall back to the ``CYXWIZ_CONTROL_PLANE`` file and env vars
when none is named (:meth:`tasks.services.ControlPlane.load`).

The block holds no secret (issue 17; SPEC F1, C3, I): every client of the Prefect API — the coordinator and
gateway that face nodes and users included — can read a block document with ``include_secrets=true``
(open-source Prefect has no per-client permission), so a ledger passphrase or a store master key in it
would hand the keys that move funds to an internet-facing process. Those come from the control worker's
own environment (``CYXWIZ_LEDGER_PASSPHRASE[_FILE]``, ``CYXWIZ_STORE_MASTER_KEY[_FILE]``, systemd
credentials in production). A document saved by an older version with a secret still set is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from blocks.no_secrets import refuse_secrets, refuse_url_password

BLOCK_ENV = "CYXWIZ_CONTROL_PLANE_BLOCK"
#: The name ``make demo`` saves.
DEFAULT_NAME = "default"

#: Fields older versions kept in the block -> where the secret lives now.
RETIRED_SECRETS = {
    "ledger_passphrase": "CYXWIZ_LEDGER_PASSPHRASE_FILE (or CYXWIZ_LEDGER_PASSPHRASE)",
    "store_master_key": "CYXWIZ_STORE_MASTER_KEY_FILE (or CYXWIZ_STORE_MASTER_KEY)",
}


class ControlPlaneBlock(Block):
    """Where the control plane's parts live; never the secrets that open them (SPEC D2, F1, H3)."""

    _block_type_name = "cyxwiz control plane"
    _block_type_slug = "cyxwiz-control-plane"
    _description = (
        "PKI, ledger config, object store, audit log, coordinator database and key ring of the trusted "
        "zone (paths and URLs only: the passphrase and master key come from the control worker's "
        "environment)."
    )

    home: Path = Field(description="Control-plane state directory.")
    pki_root: Path = Field(description="CA directory (bundle, CRL, node certificates).")
    ledger_config: Path = Field(description="Ledger config JSON (RPC URL, mint, multisig, key files).")
    store_root: Path = Field(description="Local object store root.")
    audit_dir: Path = Field(description="Audit log directory.")
    coordinator_url: str | None = Field(default=None, description="Coordinator API URL.")
    coordinator_db: str | None = Field(
        default=None, description="Coordinator database URL, without a password (libpq's PGPASSFILE)."
    )
    keyring_dir: Path | None = Field(default=None, description="Token key ring directory (rotation flow).")
    train_deployment: str = Field(default="sandboxed-train/sandboxed-train")
    trust_policy: Path | None = Field(default=None, description="Federation trust policy (YAML).")
    issuer_socket: Path | None = Field(default=None, description="Issuer service socket (CRL refresh).")
    dispatch_margin_s: int = Field(default=120, ge=0, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _no_retired_secret(cls, data: Any) -> Any:
        return refuse_secrets(data, RETIRED_SECRETS)

    @field_validator("coordinator_db")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        return refuse_url_password("coordinator_db", value, "PGPASSFILE (a 0600 file)")

    @classmethod
    def from_config(cls, config: Any) -> ControlPlaneBlock:
        """From a :class:`tasks.config.ControlPlaneConfig` (duck-typed: blocks depend on the core only)."""
        return cls(
            home=config.home,
            pki_root=config.pki_root,
            ledger_config=config.ledger_config,
            store_root=config.store_root,
            audit_dir=config.audit_dir,
            coordinator_url=config.coordinator_url,
            coordinator_db=config.coordinator_db,
            keyring_dir=config.keyring_dir,
            train_deployment=config.train_deployment,
            dispatch_margin_s=config.dispatch_margin_s,
            trust_policy=getattr(config, "trust_policy", None),
            issuer_socket=getattr(config, "issuer_socket", None),
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
            "coordinator_db": self.coordinator_db,
            "keyring_dir": self.keyring_dir,
            "train_deployment": self.train_deployment,
            "dispatch_margin_s": self.dispatch_margin_s,
            "trust_policy": self.trust_policy,
            "issuer_socket": self.issuer_socket,
        }


def load_control_plane(name: str) -> dict[str, Any]:
    """``ControlPlaneBlock.load(name)`` as config values; a document with a secret in it is refused."""
    from pydantic import ValidationError

    from cyxwiz.errors import ConfigError

    try:
        block = ControlPlaneBlock.load(name)
    except RuntimeError as exc:  # Prefect wraps the validation error of a document it cannot load
        cause = exc.__cause__
        if not isinstance(cause, ValidationError):
            raise
        reasons = "; ".join(str(e.get("ctx", {}).get("error") or e["msg"]) for e in cause.errors())
        raise ConfigError(f"control-plane block {name!r} refused: {reasons}", field=BLOCK_ENV) from None
    assert isinstance(block, ControlPlaneBlock)  # a sync load returns the block itself
    return block.config_values()
