"""Typed configuration blocks: paths, URLs and names, never a secret (issue 17; SPEC F1, C3, I).

Every Prefect API client can read a block document's secret fields (``include_secrets=true``; open-source
Prefect has no per-client permission), and the coordinator and gateway that face nodes and users hold the
API credential. So private keys, key passphrases and master keys stay in 0600 files and the environment of
the one process that uses them; a document saved by an older version with such a field set is refused.

Blocks only carry configuration; they hand it to the core (``cyxwiz``) as plain values, which keeps the
core free of Prefect and lets the same settings come from env vars or files outside Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from blocks.no_secrets import refuse_secrets, refuse_url_password


class PKIMaterialBlock(Block):
    """Certificate, key and trust bundle of one identity (node, gateway, coordinator) — SPEC A1–A5.

    The private key is a path (a 0600 file), never PEM text in the block; the certificate and bundle are
    public and may be given as PEM text, written to files by :meth:`materialize` because OpenSSL only
    reads files.
    """

    _block_type_name = "cyxwiz PKI material"
    _block_type_slug = "cyxwiz-pki-material"
    _description = "Ed25519 certificate, private key and CA bundle for one cyxwiz identity."

    cert_path: Path | None = Field(default=None, description="PEM certificate (chain) file.")
    key_path: Path | None = Field(default=None, description="PEM private key file (0600).")
    ca_bundle_path: Path | None = Field(default=None, description="Trusted CA bundle (PEM).")
    crl_path: Path | None = Field(default=None, description="Current CRL (PEM), hot-reloaded.")
    cert_pem: str | None = Field(default=None, description="Certificate PEM, instead of cert_path.")
    ca_bundle_pem: str | None = Field(default=None, description="CA bundle PEM, instead of ca_bundle_path.")

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, data: Any) -> Any:
        return refuse_secrets(data, {"key_pem": "a 0600 file named by key_path"})

    @model_validator(mode="after")
    def _one_source_each(self) -> PKIMaterialBlock:
        if self.key_path is None:
            raise ValueError("key: key_path (a 0600 file) is required")
        for name in ("cert", "ca_bundle"):
            path = getattr(self, f"{name}_path")
            pem = getattr(self, f"{name}_pem")
            if path is not None and pem is not None:
                raise ValueError(f"{name}: give {name}_path or {name}_pem, not both")
            if path is None and pem is None:
                raise ValueError(f"{name}: one of {name}_path or {name}_pem is required")
        return self

    def materialize(self, directory: Path) -> tuple[Path, Path, Path]:
        """Return (cert, key, bundle) paths, writing PEM fields to 0600 files under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

        def write(name: str, text: str) -> Path:
            path = directory / name
            fd = path.open("w", encoding="ascii")
            path.chmod(0o600)
            with fd:
                fd.write(text)
            return path

        cert = self.cert_path or write("cert.pem", self.cert_pem or "")
        assert self.key_path is not None  # the validator requires it
        key = self.key_path
        bundle = self.ca_bundle_path or write("ca-bundle.pem", self.ca_bundle_pem or "")
        return cert, key, bundle


class TokenSigningKeyBlock(Block):
    """JWT signing key ring source (SPEC B2–B3).

    EdDSA by default; HS256 only when the issuer is the sole verifier.
    """

    _block_type_name = "cyxwiz token signing key"
    _block_type_slug = "cyxwiz-token-signing-key"
    _description = "Ed25519 (or HS256, issuer-only) key used to sign cyxwiz JWTs."

    algorithm: Literal["EdDSA", "HS256"] = "EdDSA"
    key_path: Path = Field(description="Private key file (0600) on the issuer's host, never PEM text here.")
    rotation_days: int = Field(default=30, ge=1, le=365, description="Days between signing-key rotations.")

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, data: Any) -> Any:
        return refuse_secrets(data, {"private_key_pem": "a 0600 file named by key_path"})


class EscrowLedgerBlock(Block):
    """Where escrows live: the local ledger service (LiteSVM) or a Solana RPC endpoint (SPEC F1–F3)."""

    _block_type_name = "cyxwiz escrow ledger"
    _block_type_slug = "cyxwiz-escrow-ledger"
    _description = "Solana JSON-RPC endpoint, mint and multisig authority keys for job escrows."

    rpc_url: str = Field(default="http://127.0.0.1:8899", description="Solana JSON-RPC URL.")
    mint: str | None = Field(default=None, description="SPL mint address (base58).")
    keys_dir: Path | None = Field(default=None, description="Directory of encrypted authority keys.")
    minimum_payment: int = Field(default=1, ge=1, description="Smallest escrow, integer base units.")
    database_url: str = Field(default="sqlite:///escrow.db", description="SQLAlchemy URL of the intent log.")

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, data: Any) -> Any:
        return refuse_secrets(
            data, {"keys_passphrase": "CYXWIZ_LEDGER_PASSPHRASE_FILE (or CYXWIZ_LEDGER_PASSPHRASE)"}
        )

    @field_validator("database_url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        return refuse_url_password("database_url", value, "PGPASSFILE (a 0600 file)") or value


class ObjectStoreBlock(Block):
    """Archive location: a local directory (embedded default) or S3 (SPEC D2–D3, H3)."""

    _block_type_name = "cyxwiz object store"
    _block_type_slug = "cyxwiz-object-store"
    _description = "Local directory or S3 bucket for job inputs, outputs, proofs and audit archives."

    backend: Literal["local", "s3"] = "local"
    root: Path | None = Field(default=None, description="Local backend: root directory.")
    bucket: str | None = Field(default=None, description="S3 backend: bucket name.")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, Ceph RGW); None = AWS.")
    region: str | None = Field(default=None)
    aws_credentials_block: str | None = Field(
        default=None, description="Name of a prefect-aws AwsCredentials block holding the S3 credentials."
    )
    sse: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, data: Any) -> Any:
        return refuse_secrets(
            data, {"master_key": "CYXWIZ_STORE_MASTER_KEY_FILE (or CYXWIZ_STORE_MASTER_KEY)"}
        )

    @model_validator(mode="after")
    def _backend_fields(self) -> ObjectStoreBlock:
        if self.backend == "local" and self.root is None:
            raise ValueError("root is required for the local backend")
        if self.backend == "s3" and not self.bucket:
            raise ValueError("bucket is required for the s3 backend")
        return self


class SandboxPolicyBlock(Block):
    """Sandbox backend and the job limits a node enforces (SPEC E1–E3).

    The worker applies these; a deployment's job variables can only narrow them, never widen them.
    """

    _block_type_name = "cyxwiz sandbox policy"
    _block_type_slug = "cyxwiz-sandbox-policy"
    _description = "Sandbox backend (bubblewrap, docker, gvisor) and maximum job limits."

    backend: Literal["bubblewrap", "docker", "gvisor"] = "bubblewrap"
    max_memory_mb: int = Field(default=8192, ge=64)
    max_cpu_cores: float = Field(default=2.0, gt=0)
    max_wall_seconds: int = Field(default=3600, ge=1)
    max_output_mb: int = Field(default=1024, ge=1)
    max_pids: int = Field(default=256, ge=8)
