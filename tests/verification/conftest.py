"""Shared fixtures: a dev PKI with two nodes, the digits split, one honest training run, and helpers that
play a dishonest node (rewrite outputs, rebuild commitments consistently, re-sign)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.pki.certs import fingerprint_sha256, load_certificate, load_crls
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from cyxwiz.training.data import DigitsFiles, prepare_digits
from cyxwiz.training.runtime import RecordingReporter, run_training
from cyxwiz.training.spec import TrainingJob, parse_training_job
from cyxwiz.verification.proof import SignedProof, build_proof, sign_proof
from cyxwiz.verification.reference import reference_job_document
from cyxwiz.verification.replay import ReplayPolicy
from cyxwiz.verification.report import VerificationReport
from cyxwiz.verification.verifier import Expectations, JobData, TrustStore, verify_job
from tests._forgery import rechain

# Proof times sit inside the dev certificates' validity (issued when the session starts).
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=5)
#: The PeerID of node-1, the node that trains the session's runs (the run seed mixes it in, issue 17).
TRAINER: str | None = None


def reference_job(
    data: DigitsFiles,
    *,
    job_id: str = "job-1",
    seed: int = 7,
    epochs: int = 6,
    learning_rate: float = 0.01,
    threshold: float = 0.9,
    job_secret: str | None = None,
) -> dict[str, Any]:
    # A fixed secret per job id keeps the session's runs reproducible; production draws it per job.
    secret = job_secret or hashlib.sha256(f"test-secret:{job_id}".encode()).hexdigest()
    return reference_job_document(
        job_id=job_id,
        train=data.train,
        train_sha256=data.train_sha256,
        seed=seed,
        job_secret=secret,
        epochs=epochs,
        learning_rate=learning_rate,
        threshold=threshold,
        checkpoint_every=5,
    )


def write_job(directory: Path, doc: dict[str, Any]) -> tuple[Path, TrainingJob]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "job.json"
    path.write_text(json.dumps(doc))
    return path, parse_training_job(doc, allow_file_uris=True)


@dataclass
class World:
    pki: DevPKI
    digits: DigitsFiles
    job: TrainingJob
    honest_out: Path
    messages: list[dict[str, object]]
    tmp: Path

    def trust(self) -> TrustStore:
        return TrustStore(
            trusted=[load_certificate(self.pki.ca_cert), load_certificate(self.pki.root_ca_cert)],
            crls=load_crls(self.pki.crl),
        )

    def cert(self, node: str = "node-1") -> Any:
        return load_certificate(self.pki.node_cert(node))

    def peer(self, node: str = "node-1") -> str:
        return peer_id(self.cert(node))

    def sign(
        self,
        out: Path,
        *,
        job: TrainingJob | None = None,
        node: str = "node-1",
        key_of: str | None = None,
        jti: str = "jti-1",
    ) -> SignedProof:
        """What a node does at the end: build the proof over ``out`` and sign it."""
        job = job or self.job
        cert = self.cert(node)
        proof = build_proof(
            job_id=job.job_id,
            job_spec_sha256=job.sha256(),
            output_dir=out,
            node_peer_id=peer_id(cert),
            cert_fingerprint_sha256=fingerprint_sha256(cert).hex(),
            token_jti=jti,
            started_at=T0,
            finished_at=T0 + dt.timedelta(seconds=3),
        )
        return sign_proof(proof, load_private_key(self.pki.node_key(key_of or node)))

    def copy_outputs(self, name: str) -> Path:
        target = self.tmp / name
        shutil.copytree(self.honest_out, target)
        return target

    def verify(
        self,
        out: Path,
        proof: SignedProof,
        *,
        job: TrainingJob | None = None,
        node: str = "node-1",
        assigned: str = "node-1",
        jti: str = "jti-1",
        policy: ReplayPolicy | None = None,
        trust: TrustStore | None = None,
        received_at: dt.datetime | None = None,
    ) -> VerificationReport:
        return verify_job(
            proof=proof,
            node_certificate=self.cert(node),
            job=job or self.job,
            output_dir=out,
            data=JobData(
                train=self.digits.train,
                holdout=self.digits.holdout,
                holdout_sha256=self.digits.holdout_sha256,
            ),
            trust=trust or self.trust(),
            expect=Expectations(
                node_peer_id=peer_id(self.cert(assigned)),
                token_jti=jti,
                received_at=received_at or T0 + dt.timedelta(seconds=10),
            ),
            policy=policy or ReplayPolicy(sample_seed=1),
        )


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    global T0, TRAINER  # noqa: PLW0603 - proof times follow the PKI's birth, however late in a long suite
    root = tmp_path_factory.mktemp("verification")
    pki = build_dev_pki(root / "pki", nodes=("node-1", "node-2"))
    T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=5)
    TRAINER = peer_id(load_certificate(pki.node_cert("node-1")))
    digits = prepare_digits(root / "data")
    job_path, job = write_job(root / "job", reference_job(digits))
    out = root / "honest"
    reporter = RecordingReporter()
    run_training(job_path, data_path=digits.train, output_dir=out, reporter=reporter, trainer=TRAINER)
    return World(pki=pki, digits=digits, job=job, honest_out=out, messages=reporter.messages, tmp=root)


def train_variant(world: World, name: str, doc: dict[str, Any], *, node: str = "node-1") -> Path:
    """Outputs of a run with another spec (what a node that changed the seed or lr would deliver), trained
    for ``node``."""
    job_path, _ = write_job(world.tmp / f"{name}-job", doc)
    out = world.tmp / name
    run_training(
        job_path,
        data_path=world.digits.train,
        output_dir=out,
        reporter=RecordingReporter(),
        trainer=world.peer(node),
    )
    return out


def rebuild_trace(
    out: Path,
    rewrite: Callable[[int, dict[str, Any]], dict[str, Any] | None],
    *,
    trainer: str | None = None,
) -> None:
    """A dishonest node's edit: rewrite chosen checkpoints, then make every hash, commitment, the
    delivered model and its claimed metrics consistent again (so only the verifier's replay can tell)."""
    rechain(out, rewrite)
    restate_metrics(out, trainer=trainer)


def restate_metrics(out: Path, *, trainer: str | None = None) -> None:
    """Recompute metrics.json honestly for whatever model is now delivered (a careful cheat), on the
    validation split of ``trainer``'s run (default: node-1, the session's trainer)."""
    from safetensors.torch import load_file

    from cyxwiz.training import engine
    from cyxwiz.training.data import load_dataset

    job = parse_training_job((out.parent / "job" / "job.json").read_text(), allow_file_uris=True)
    assert job.model is not None
    data = load_dataset(
        Path(job.dataset.uri.removeprefix("file://")),
        sha256=None,
        input_shape=job.model.input_shape,
        input_dtype="float32",
        num_classes=10,
    )
    state = engine.new_state(job, data, trainer=trainer or TRAINER)
    state.model.load_state_dict(load_file(str(out / "model.safetensors")))
    metrics_path = out / "metrics.json"
    doc = json.loads(metrics_path.read_text())
    doc["final"]["val_accuracy"] = engine.evaluate(state.model, state.validation)["accuracy"]
    metrics_path.write_text(json.dumps(doc))
