"""Completion proofs: canonical signing bytes, Ed25519 signature, every field covered (SPEC F1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.errors import ProofSignatureError, VerificationError
from cyxwiz.verification.commitments import (
    COMMITMENTS_FILE,
    GENESIS,
    Commitment,
    commitments_root,
    write_commitments,
)
from cyxwiz.verification.proof import (
    SignedProof,
    build_proof,
    hash_artifacts,
    sign_proof,
    verify_proof_signature,
)


def _outputs(root: Path) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "step-00000000.safetensors").write_bytes(b"w0")
    (root / "model.safetensors").write_bytes(b"model")
    (root / "metrics.json").write_text(json.dumps({"final": {"val_accuracy": 0.95, "loss": 0.1}}))
    c = Commitment(
        step=0,
        weights_sha256="a" * 64,
        batch_indices_sha256="b" * 64,
        prev=GENESIS,
        path="checkpoints/step-00000000.safetensors",
    )
    write_commitments(root / COMMITMENTS_FILE, [c])
    return root


def _proof(out: Path, **overrides: object) -> object:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    kwargs: dict[str, object] = dict(
        job_id="job-1",
        job_spec_sha256="c" * 64,
        output_dir=out,
        node_peer_id="12D3KooWnode",
        cert_fingerprint_sha256="d" * 64,
        token_jti="jti-1",
        started_at=now,
        finished_at=now + timedelta(seconds=5),
    )
    kwargs.update(overrides)
    return build_proof(**kwargs)  # type: ignore[arg-type]


def test_build_sign_verify_round_trip(tmp_path: Path) -> None:
    out = _outputs(tmp_path / "out")
    proof = _proof(out)
    assert proof.metrics == {"val_accuracy": 0.95, "loss": 0.1}  # type: ignore[attr-defined]
    assert set(proof.artifacts) == {
        "model.safetensors",
        "metrics.json",
        COMMITMENTS_FILE,  # type: ignore[attr-defined]
        "checkpoints/step-00000000.safetensors",
    }
    assert proof.checkpoints.count == 1  # type: ignore[attr-defined]
    assert proof.started_at == "2026-01-02T03:04:05.000000Z"  # type: ignore[attr-defined]
    key = Ed25519PrivateKey.generate()
    signed = sign_proof(proof, key)  # type: ignore[arg-type]
    again = SignedProof.from_json(signed.to_json())
    verify_proof_signature(again, key.public_key())
    assert again.sha256() == signed.sha256()


def test_signature_by_another_key_is_refused(tmp_path: Path) -> None:
    signed = sign_proof(_proof(_outputs(tmp_path)), Ed25519PrivateKey.generate())  # type: ignore[arg-type]
    with pytest.raises(ProofSignatureError) as info:
        verify_proof_signature(signed, Ed25519PrivateKey.generate().public_key())
    assert info.value.rule == "F1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", "job-2"),
        ("node_peer_id", "12D3KooWother"),
        ("token_jti", "jti-2"),
        ("metrics", {"val_accuracy": 0.99, "loss": 0.1}),
        ("finished_at", "2026-01-02T03:04:06.000000Z"),
        ("artifacts", {"model.safetensors": "0" * 64}),
    ],
)
def test_any_changed_field_breaks_the_signature(tmp_path: Path, field: str, value: object) -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_proof(_proof(_outputs(tmp_path)), key)  # type: ignore[arg-type]
    data = json.loads(signed.to_json())
    data["proof"][field] = value
    forged = SignedProof.from_json(json.dumps(data))
    with pytest.raises(ProofSignatureError):
        verify_proof_signature(forged, key.public_key())


def test_garbage_signature_is_a_signature_error(tmp_path: Path) -> None:
    signed = sign_proof(_proof(_outputs(tmp_path)), Ed25519PrivateKey.generate())  # type: ignore[arg-type]
    data = json.loads(signed.to_json())
    data["signature"] = "!" * 86
    with pytest.raises(ProofSignatureError):
        verify_proof_signature(
            SignedProof.from_json(json.dumps(data)), Ed25519PrivateKey.generate().public_key()
        )


def test_malformed_proofs_are_refused(tmp_path: Path) -> None:
    signed = sign_proof(_proof(_outputs(tmp_path)), Ed25519PrivateKey.generate())  # type: ignore[arg-type]
    data = json.loads(signed.to_json())
    data["proof"]["artifacts"] = {"../etc/passwd": "0" * 64}
    with pytest.raises(VerificationError) as info:
        SignedProof.from_json(json.dumps(data))
    assert info.value.field == "proof.artifacts"
    data = json.loads(signed.to_json())
    data["proof"]["extra"] = 1
    with pytest.raises(VerificationError):
        SignedProof.from_json(json.dumps(data))
    with pytest.raises(VerificationError):
        SignedProof.from_file(tmp_path / "missing.json")


def test_symlinked_output_is_refused(tmp_path: Path) -> None:
    out = _outputs(tmp_path / "out")
    (out / "leak").symlink_to("/etc/hostname")
    with pytest.raises(VerificationError) as info:
        hash_artifacts(out)
    assert info.value.path == "leak"


def test_merkle_root_in_proof_matches_commitments(tmp_path: Path) -> None:
    out = _outputs(tmp_path)
    proof = _proof(out)
    from cyxwiz.verification.commitments import read_commitments

    assert proof.checkpoints.merkle_root == commitments_root(read_commitments(out / COMMITMENTS_FILE))  # type: ignore[attr-defined]


def test_naive_timestamps_are_refused(tmp_path: Path) -> None:
    from cyxwiz.errors import ValidationError

    with pytest.raises(ValidationError):
        _proof(_outputs(tmp_path), started_at=datetime(2026, 1, 1))
