"""Completion proofs: what a node signs when a job finishes (ARCHITECTURE step 4, SPEC F1).

The proof binds the job (id and canonical spec hash), the node (PeerID and certificate fingerprint),
the job token (jti), every output artifact (SHA-256), the claimed metrics, the Merkle root of the
checkpoint commitments, and the start/end time. It is signed with the node's certified Ed25519 key over
:func:`canonical_json` of the proof, so any change to any field breaks the signature.

The run's seed mixes in the PeerID it was trained for (:mod:`cyxwiz.verification.binding`): the signing
key's, unless the node renewed its certificate meanwhile. Then the proof, restated under the renewed
certificate, names the key the run was trained for (``trainer_peer_id``) and carries the renewal links
(:mod:`cyxwiz.verification.renewal_links`) that lead from it to the signing key, each signed by the older
key; the verifier follows them by their signatures alone. Both fields are left out of the signed bytes
when unset, so a proof of a node that never renewed is what it always was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cyxwiz.errors import ProofSignatureError, ValidationError, VerificationError
from cyxwiz.hashing import file_sha256
from cyxwiz.verification.canonical import canonical_json, canonical_sha256
from cyxwiz.verification.commitments import COMMITMENTS_FILE, commitments_root, read_commitments
from cyxwiz.verification.renewal_links import MAX_LINKS

__all__ = [
    "CheckpointSummary",
    "CompletionProof",
    "SignedProof",
    "build_proof",
    "canonical_json",
    "canonical_sha256",
    "hash_artifacts",
    "restate_proof",
    "sign_proof",
    "verify_proof_signature",
]

_HEX64 = r"^[0-9a-f]{64}$"
_MAX_ARTIFACTS = 100_000


def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValidationError("timestamps must be timezone-aware", field="started_at")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CheckpointSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    merkle_root: str = Field(pattern=_HEX64)
    count: int = Field(ge=0)


class CompletionProof(BaseModel):
    """The signed statement "node N ran job J and produced these artifacts and metrics"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    job_id: str = Field(min_length=1, max_length=128)
    job_spec_sha256: str = Field(pattern=_HEX64)
    node_peer_id: str = Field(min_length=1, max_length=128)
    cert_fingerprint_sha256: str = Field(pattern=_HEX64)
    token_jti: str = Field(min_length=1, max_length=256)
    #: Relative path under the job's output directory → hex SHA-256.
    artifacts: dict[str, str]
    metrics: dict[str, float]
    checkpoints: CheckpointSummary
    started_at: str
    finished_at: str
    #: The PeerID the run was trained for, when not ``node_peer_id`` (the node renewed during the job).
    trainer_peer_id: str | None = Field(default=None, min_length=1, max_length=128)
    #: The signed renewal links from ``trainer_peer_id`` to ``node_peer_id`` (checked by their signatures).
    renewal_links: tuple[dict[str, Any], ...] = Field(default=(), max_length=MAX_LINKS)

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name:
                raise ValueError(f"artifact path {name!r} must be relative and stay inside the output")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"artifact {name!r}: not a hex SHA-256")
        return value

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not math.isfinite(v) for v in value.values()):
            raise ValueError("metrics must be finite numbers")
        return value

    @field_validator("started_at", "finished_at")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        if not value.endswith("Z"):
            raise ValueError("timestamps are UTC RFC 3339 ending in 'Z'")
        datetime.fromisoformat(value)
        return value

    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)

    def trainer(self) -> str:
        """The PeerID the run was trained for: ``trainer_peer_id``, else the signing node's."""
        return self.trainer_peer_id or self.node_peer_id

    def signing_bytes(self) -> bytes:
        unset = {k for k in ("trainer_peer_id", "renewal_links") if not getattr(self, k)}
        return canonical_json(self.model_dump(mode="json", exclude=unset))


class SignedProof(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    proof: CompletionProof
    alg: Literal["Ed25519"] = "Ed25519"
    #: base64url (no padding) Ed25519 signature over ``proof.signing_bytes()``.
    signature: str = Field(min_length=86, max_length=88)

    def to_json(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: str | bytes) -> SignedProof:
        try:
            return cls.model_validate_json(data)
        except pydantic.ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in error["loc"])
            raise VerificationError(f"malformed proof: {error['msg']}", field=where or None) from None

    @classmethod
    def from_file(cls, path: Path) -> SignedProof:
        try:
            return cls.from_json(path.read_bytes())
        except OSError as exc:
            raise VerificationError(f"cannot read proof: {exc.strerror}", path=str(path)) from None


def sign_proof(proof: CompletionProof, private_key: Ed25519PrivateKey) -> SignedProof:
    """Sign ``proof`` with the node's Ed25519 key (the key of its certificate)."""
    signature = private_key.sign(proof.signing_bytes())
    return SignedProof(proof=proof, signature=base64.urlsafe_b64encode(signature).rstrip(b"=").decode())


def verify_proof_signature(signed: SignedProof, public_key: Ed25519PublicKey) -> None:
    """Raise ProofSignatureError unless ``signed`` carries a valid signature by ``public_key``."""
    try:
        raw = base64.urlsafe_b64decode(signed.signature + "=" * (-len(signed.signature) % 4))
        public_key.verify(raw, signed.proof.signing_bytes())
    except (InvalidSignature, ValueError):
        raise ProofSignatureError(
            "the proof signature does not verify with the node certificate's key",
            field="signature",
            rule="F1",
        ) from None


def artifact_paths(output_dir: Path) -> dict[str, Path]:
    """Every regular file under ``output_dir`` by relative POSIX path; symlinks are refused."""
    root = output_dir.resolve()
    if not root.is_dir():
        raise VerificationError("the output directory does not exist", path=str(output_dir))
    result: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise VerificationError(
                "an output is a symbolic link", path=str(path.relative_to(root)), rule="E5"
            )
        if not path.is_file():
            continue
        if len(result) >= _MAX_ARTIFACTS:
            raise VerificationError(f"more than {_MAX_ARTIFACTS} output files", path=str(root))
        result[path.relative_to(root).as_posix()] = path
    return result


def hash_artifacts(output_dir: Path, *, skip: Callable[[str], bool] | None = None) -> dict[str, str | None]:
    """SHA-256 of every regular file under ``output_dir`` (relative POSIX paths); symlinks are refused.
    Files ``skip`` names are listed with ``None`` (the verifier hashes checkpoints when it reads them)."""
    return {
        name: None if skip is not None and skip(name) else file_sha256(path)
        for name, path in artifact_paths(output_dir).items()
    }


def _read_metrics(output_dir: Path) -> dict[str, float]:
    path = output_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise VerificationError(f"metrics.json is not JSON: {exc}", path="metrics.json") from None
    values = data.get("final", data) if isinstance(data, Mapping) else None
    if not isinstance(values, Mapping):
        raise VerificationError("metrics.json must hold an object of numbers", path="metrics.json")
    return {
        str(k): float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def build_proof(
    *,
    job_id: str,
    job_spec_sha256: str,
    output_dir: Path,
    node_peer_id: str,
    cert_fingerprint_sha256: str,
    token_jti: str,
    started_at: datetime,
    finished_at: datetime,
) -> CompletionProof:
    """Collect the proof of a finished job from its output directory (artifacts, metrics, commitments),
    for a run trained for ``node_peer_id`` (a renewed node restates it: :func:`restate_proof`)."""
    commitments_path = output_dir / COMMITMENTS_FILE
    commitments = read_commitments(commitments_path) if commitments_path.is_file() else []
    return CompletionProof(
        job_id=job_id,
        job_spec_sha256=job_spec_sha256,
        node_peer_id=node_peer_id,
        cert_fingerprint_sha256=cert_fingerprint_sha256,
        token_jti=token_jti,
        artifacts={name: file_sha256(path) for name, path in artifact_paths(output_dir).items()},
        metrics=_read_metrics(output_dir),
        checkpoints=CheckpointSummary(merkle_root=commitments_root(commitments), count=len(commitments)),
        started_at=_utc(started_at),
        finished_at=_utc(finished_at),
    )


def restate_proof(
    signed: SignedProof,
    *,
    node_peer_id: str,
    cert_fingerprint_sha256: str,
    links: Sequence[Mapping[str, Any]],
    private_key: Ed25519PrivateKey,
) -> SignedProof:
    """``signed`` as the node's renewed certificate states it: the same claims, the trainer kept (the run
    still belongs to the key it was trained for), the renewal links from that trainer to the new key, and
    the new key's signature. Whoever calls it checks the earlier signature first."""
    proof = signed.proof
    restated = proof.model_copy(
        update={
            "node_peer_id": node_peer_id,
            "cert_fingerprint_sha256": cert_fingerprint_sha256,
            "trainer_peer_id": proof.trainer(),
            "renewal_links": tuple(dict(link) for link in links),
        }
    )
    return sign_proof(CompletionProof.model_validate(restated.model_dump()), private_key)
