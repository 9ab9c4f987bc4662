"""Outputs freeze when the proof is submitted (issue 18; SPEC D3, F1): the archive step checks every
stored object against the proof's hashes; an object the proof does not list is refused (removed, never
archived) and one overwritten after the proof fails the archive."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.errors import IntegrityError
from cyxwiz.storage.local import LocalObjectStore
from cyxwiz.verification.proof import build_proof, sign_proof
from tasks.services import check_outputs_against_proof

JOB = "job-freeze"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _world(tmp_path: Path) -> tuple[LocalObjectStore, dict[str, object]]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    end = T0 + dt.timedelta(seconds=1)
    proof = build_proof(
        job_id=JOB, job_spec_sha256="0" * 64, output_dir=out, node_peer_id="12D3KooWnode",
        cert_fingerprint_sha256="1" * 64, token_jti="jti", started_at=T0, finished_at=end,
    )  # fmt: skip
    signed = sign_proof(proof, ed25519.Ed25519PrivateKey.generate())
    st = LocalObjectStore(root=tmp_path / "store", master_key=None)
    for name in proof.artifacts:
        st.put_bytes(f"jobs/{JOB}/outputs/{name}", (out / name).read_bytes())
    return st, json.loads(signed.to_json())


def test_listed_outputs_with_their_hashes_pass(tmp_path: Path) -> None:
    st, proof = _world(tmp_path)
    assert check_outputs_against_proof(st, JOB, proof) == []
    assert len(st.list(f"jobs/{JOB}/outputs/")) == 2


def test_an_object_the_proof_does_not_list_is_refused(tmp_path: Path) -> None:
    st, proof = _world(tmp_path)
    st.put_bytes(f"jobs/{JOB}/outputs/smuggled.bin", b"late upload")
    assert check_outputs_against_proof(st, JOB, proof) == [f"jobs/{JOB}/outputs/smuggled.bin"]
    assert sorted(i.key.rsplit("/", 1)[1] for i in st.list(f"jobs/{JOB}/outputs/")) == [
        "metrics.json",
        "model.safetensors",
    ]


def test_an_output_overwritten_after_the_proof_fails_the_archive(tmp_path: Path) -> None:
    st, proof = _world(tmp_path)
    st.put_bytes(f"jobs/{JOB}/outputs/model.safetensors", b"swapped weights")
    with pytest.raises(IntegrityError) as exc:
        check_outputs_against_proof(st, JOB, proof)
    assert exc.value.rule == "D3" and "model.safetensors" in str(exc.value)


def test_no_proof_no_outputs(tmp_path: Path) -> None:
    st, _proof = _world(tmp_path)
    removed = check_outputs_against_proof(st, JOB, None)
    assert len(removed) == 2 and st.list(f"jobs/{JOB}/outputs/") == []
