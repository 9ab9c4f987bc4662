"""Typed configuration blocks. Secrets are ``SecretStr`` so the UI and logs never show them.

Blocks only carry configuration; they hand it to the core (``cyxwiz``) as plain values, which keeps the
core free of Prefect and lets the same settings come from env vars or files outside Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator


class PKIMaterialBlock(Block):
    """Certificate, key and trust bundle of one identity (node, gateway, coordinator) — SPEC A1–A5.

    Give either paths (the key file must be 0600, checked when loaded) or PEM text; PEM text is written to a
    0600 file by :meth:`materialize` because OpenSSL only reads files.
    """

    _block_type_name = "cyxwiz PKI material"
    _block_type_slug = "cyxwiz-pki-material"
    _description = "Ed25519 certificate, private key and CA bundle for one cyxwiz identity."

    cert_path: Path | None = Field(default=None, description="PEM certificate (chain) file.")
    key_path: Path | None = Field(default=None, description="PEM private key file (0600).")
    ca_bundle_path: Path | None = Field(default=None, description="Trusted CA bundle (PEM).")
    crl_path: Path | None = Field(default=None, description="Current CRL (PEM), hot-reloaded.")
    cert_pem: str | None = Field(default=None, description="Certificate PEM, instead of cert_path.")
    key_pem: SecretStr | None = Field(default=None, description="Private key PEM, instead of key_path.")
    ca_bundle_pem: str | None = Field(default=None, description="CA bundle PEM, instead of ca_bundle_path.")

    @model_validator(mode="after")
    def _one_source_each(self) -> PKIMaterialBlock:
        for name in ("cert", "key", "ca_bundle"):
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
        key = self.key_path or write("key.pem", self.key_pem.get_secret_value() if self.key_pem else "")
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
    private_key_pem: SecretStr | None = Field(default=None, description="Ed25519 private key PEM.")
    key_path: Path | None = Field(default=None, description="Key file (0600) instead of PEM text.")
    rotation_days: int = Field(default=30, ge=1, le=365, description="Days between signing-key rotations.")

    @model_validator(mode="after")
    def _one_source(self) -> TokenSigningKeyBlock:
        if (self.private_key_pem is None) == (self.key_path is None):
            raise ValueError("give exactly one of private_key_pem or key_path")
        return self


class EscrowLedgerBlock(Block):
    """Where escrows live: the local ledger service (LiteSVM) or a Solana RPC endpoint (SPEC F1–F3)."""

    _block_type_name = "cyxwiz escrow ledger"
    _block_type_slug = "cyxwiz-escrow-ledger"
    _description = "Solana JSON-RPC endpoint, mint and multisig authority keys for job escrows."

    rpc_url: str = Field(default="http://127.0.0.1:8899", description="Solana JSON-RPC URL.")
    mint: str | None = Field(default=None, description="SPL mint address (base58).")
    keys_dir: Path | None = Field(default=None, description="Directory of encrypted authority keys.")
    keys_passphrase: SecretStr | None = Field(default=None, description="Passphrase for the key files.")
    minimum_payment: int = Field(default=1, ge=1, description="Smallest escrow, integer base units.")
    database_url: str = Field(default="sqlite:///escrow.db", description="SQLAlchemy URL of the intent log.")


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
    master_key: SecretStr | None = Field(
        default=None, description="Base64 master key for client-side envelope encryption of model files."
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
