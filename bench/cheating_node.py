"""The cheating-node simulator (issue 20 acceptance; SPEC F1, threat "malicious node").

Each strategy plays a node that cheats on a real (tiny) training job and then makes its outputs internally
consistent: every checkpoint it changed is re-hashed, the commitment chain re-linked with the data order of
the job it claims, the delivered model and metrics restated, and the completion proof re-signed with the
node's own certified key — so certificate, signature, identity and artifact checks all pass and only the
training checks can tell. :func:`simulate` runs a strategy many times against the project's own
``verify_job`` and counts detections and which check caught them; ``bench/bench_verification.py`` runs
≥ 200 of each, ``tests/verification/test_cheating_node.py`` a few.

The job is deliberately tiny (8 inputs, 147 parameters, 3 gaussian classes, one checkpoint per step) so a
run costs milliseconds; the verifier's rules do not depend on model size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from bench.cheating_strategies import STRATEGIES
from bench.cheating_world import Run, SimWorld, Tensors, train
from cyxwiz.training import engine
from cyxwiz.training.runtime import RUNTIME_FILE, checkpoint_name
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.commitments import COMMITMENTS_FILE, GENESIS, Commitment, write_commitments
from cyxwiz.verification.replay import ReplayPolicy
from cyxwiz.verification.report import VerificationReport

__all__ = [
    "STRATEGIES",
    "SimWorld",
    "Tally",
    "honest_runs",
    "sign",
    "sign_and_verify",
    "simulate",
    "train",
    "verify",
    "wilson_interval",
    "write_outputs",
]


# -- making a forgery consistent and verifying it --------------------------------------------------


def write_outputs(world: SimWorld, run: Run, checkpoints: list[Tensors], out: Path) -> None:
    """What the node delivers: checkpoints, a re-linked commitment chain with the claimed job's data order,
    the last checkpoint as the model, metrics restated for that model, and the runtime declaration."""
    from safetensors.torch import save_file

    state = engine.new_state(run.job, world.data, trainer=run.trainer)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    commitments: list[Commitment] = []
    prev_hash, prev_step = GENESIS, 0
    for step, tensors in zip(run.steps, checkpoints, strict=True):
        blob = save_bytes(tensors, metadata={"step": str(step)})
        (out / checkpoint_name(step)).write_bytes(blob)
        c = Commitment(
            step=step,
            weights_sha256=hashlib.sha256(blob).hexdigest(),
            batch_indices_sha256=state.order.segment_sha256(prev_step, step),
            prev=prev_hash,
            path=checkpoint_name(step),
        )
        commitments.append(c)
        prev_hash, prev_step = c.digest(), step
    write_commitments(out / COMMITMENTS_FILE, commitments)
    model = {k.removeprefix("model."): v for k, v in checkpoints[-1].items() if k.startswith("model.")}
    save_file(model, str(out / "model.safetensors"))
    state.model.load_state_dict(model)
    final = engine.evaluate(state.model, state.validation)
    metrics = {"val_accuracy": final["accuracy"], "val_loss": final["loss"], "steps": float(run.steps[-1])}
    (out / "metrics.json").write_text(json.dumps({"final": metrics}), encoding="utf-8")
    runtime = {"device_class": "cpu", "dtype": "float32", "torch": torch.__version__, "deterministic": True}
    (out / RUNTIME_FILE).write_text(json.dumps(runtime), encoding="utf-8")


def sign(world: SimWorld, job: TrainingJob, out: Path) -> Any:
    """The node's side: build the completion proof over ``out`` and sign it with the node's key."""
    from cyxwiz.pki.certs import fingerprint_sha256, load_certificate
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.verification.proof import build_proof, sign_proof

    cert = load_certificate(world.pki.node_cert("node-1"))
    now = dt.datetime.now(dt.UTC)
    return sign_proof(
        build_proof(
            job_id=job.job_id,
            job_spec_sha256=job.sha256(),
            output_dir=out,
            node_peer_id=peer_id(cert),
            cert_fingerprint_sha256=fingerprint_sha256(cert).hex(),
            token_jti=f"jti-{job.job_id}",
            started_at=now - dt.timedelta(seconds=2),
            finished_at=now - dt.timedelta(seconds=1),
        ),
        load_private_key(world.pki.node_key("node-1")),
    )


def verify(
    world: SimWorld, job: TrainingJob, out: Path, proof: Any, *, policy: ReplayPolicy
) -> VerificationReport:
    """The trusted side: ``verify_job`` with the dev PKI's trust store and the assignment's expectations."""
    from cyxwiz.pki.certs import load_certificate, load_crls
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.verification.verifier import Expectations, JobData, TrustStore, verify_job

    cert = load_certificate(world.pki.node_cert("node-1"))
    return verify_job(
        proof=proof,
        node_certificate=cert,
        job=job,
        output_dir=out,
        data=JobData(train=world.train, holdout=world.holdout, holdout_sha256=world.holdout_sha256),
        trust=TrustStore(
            trusted=[load_certificate(world.pki.ca_cert), load_certificate(world.pki.root_ca_cert)],
            crls=load_crls(world.pki.crl),
        ),
        expect=Expectations(
            node_peer_id=peer_id(cert), token_jti=f"jti-{job.job_id}", received_at=dt.datetime.now(dt.UTC)
        ),
        policy=policy,
    )


def sign_and_verify(
    world: SimWorld, job: TrainingJob, out: Path, *, policy: ReplayPolicy
) -> VerificationReport:
    return verify(world, job, out, sign(world, job, out), policy=policy)


@dataclass
class Tally:
    runs: int = 0
    detected: int = 0
    caught_by: dict[str, int] = field(default_factory=dict)
    expected: list[float] = field(default_factory=list)

    def add(self, report: VerificationReport, expected: float | None = None) -> None:
        self.runs += 1
        if not report.passed:
            self.detected += 1
            first = report.failures[0].name
            self.caught_by[first] = self.caught_by.get(first, 0) + 1
        if expected is not None:
            self.expected.append(expected)

    @property
    def rate(self) -> float:
        return self.detected / self.runs if self.runs else 0.0

    def wilson(self, z: float = 1.96) -> tuple[float, float]:
        return wilson_interval(self.detected, self.runs, z=z)


def wilson_interval(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def honest_runs(
    world: SimWorld, *, runs: int, tag: str = "h", progress: Callable[[int, Tally], None] | None = None
) -> Tally:
    """``runs`` fresh honest jobs (each its own secret), each verified once with an OS-random sample."""
    engine.make_deterministic()
    tally = Tally()
    for i in range(runs):
        if progress is not None and i % 10 == 0:
            progress(i, tally)
        job = world.job(f"honest-{tag}-{i}")
        run = train(job, world.data, trainer=world.trainer)
        out = world.root / "runs" / f"honest-{i}"
        write_outputs(world, run, run.checkpoints, out)
        tally.add(sign_and_verify(world, job, out, policy=ReplayPolicy()), None)
        _clean(world.root / "runs")
    return tally


def simulate(
    world: SimWorld,
    names: list[str],
    *,
    jobs: int,
    verifications: int = 1,
    replay_all: bool = False,
    seed: int = 0,
    progress: Callable[[int, dict[str, Tally]], None] | None = None,
) -> dict[str, Tally]:
    """For each of ``jobs`` fresh jobs (each its own secret) and each strategy: one forgery, made
    consistent and re-signed, verified ``verifications`` times by ``verify_job`` (each with its own
    OS-random segment choice unless ``replay_all``). A tally's ``expected`` holds the hypergeometric
    detection probability of each verification, for comparison."""
    from cyxwiz.verification.sampling import miss_probability

    engine.make_deterministic()
    rng = random.Random(seed)
    tallies = {name: Tally() for name in names}
    for i in range(jobs):
        if progress is not None:
            progress(i, tallies)
        job = world.job(f"sim-{seed}-{i}")
        run = train(job, world.data, trainer=world.trainer)
        for name in names:
            forged, faked = STRATEGIES[name](run, rng)
            out = world.root / "runs" / f"{i}-{name}"
            write_outputs(world, run, forged, out)
            for _ in range(verifications):
                policy = ReplayPolicy(segments=run.segments if replay_all else None)
                report = sign_and_verify(world, job, out, policy=policy)
                n = report.summary.get("segments_replayed")
                expected = 1 - miss_probability(run.segments, faked, n) if isinstance(n, int) else None
                tallies[name].add(report, expected)
        _clean(world.root / "runs")
    return tallies


def _clean(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
