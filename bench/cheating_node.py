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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_bytes

from cyxwiz.training import engine
from cyxwiz.training.data import Dataset, load_dataset
from cyxwiz.training.runtime import RUNTIME_FILE, checkpoint_name, checkpoint_steps, segment_length
from cyxwiz.training.spec import TrainingJob, parse_training_job
from cyxwiz.verification.binding import new_job_secret
from cyxwiz.verification.commitments import COMMITMENTS_FILE, GENESIS, Commitment, write_commitments
from cyxwiz.verification.replay import ReplayPolicy
from cyxwiz.verification.report import VerificationReport

Tensors = dict[str, torch.Tensor]
#: A strategy turns the honest run of the claimed job into the checkpoints the cheat commits, and says
#: how many segments it faked (segments whose committed end an honest replay would not produce).
Strategy = Callable[["Run", random.Random], tuple[list[Tensors], int]]

FEATURES, CLASSES = 8, 3


@dataclass
class SimWorld:
    """Dev PKI, one node identity, the tiny dataset (train file for the node, holdout for the verifier)."""

    root: Path
    train: Path
    train_sha256: str
    holdout: Path
    holdout_sha256: str
    pki: Any
    data: Dataset

    @classmethod
    def create(cls, root: Path) -> SimWorld:
        from cyxwiz.hashing import file_sha256
        from cyxwiz.pki.devpki import build_dev_pki

        root.mkdir(parents=True, exist_ok=True)
        pki = build_dev_pki(root / "pki", nodes=("node-1",))
        rng = np.random.default_rng(20)
        centres = rng.normal(0, 2.0, size=(CLASSES, FEATURES)).astype(np.float32)

        def blobs(n: int) -> tuple[np.ndarray, np.ndarray]:
            y = rng.integers(0, CLASSES, size=n).astype(np.int64)
            return (centres[y] + rng.normal(0, 1.0, size=(n, FEATURES))).astype(np.float32), y

        paths = {}
        for name, rows in (("train", 240), ("holdout", 90)):
            x, y = blobs(rows)
            path = root / f"{name}.npz"
            with path.open("wb") as handle:
                np.savez(handle, X=x, y=y)
            paths[name] = path
        data = load_dataset(paths["train"], sha256=None, input_shape=(FEATURES,), input_dtype="float32",
                            num_classes=CLASSES)  # fmt: skip
        return cls(
            root=root,
            train=paths["train"],
            train_sha256=file_sha256(paths["train"]),
            holdout=paths["holdout"],
            holdout_sha256=file_sha256(paths["holdout"]),
            pki=pki,
            data=data,
        )

    def job(self, job_id: str, *, epochs: int = 4, secret: str | None = None) -> TrainingJob:
        """The tiny job: 216 training rows, batch 16 → 14 steps an epoch, one checkpoint per step."""
        doc = {
            "job_id": job_id,
            "job_type": "model",
            "model": {
                "input_shape": [FEATURES],
                "layers": [
                    {"name": "fc1", "type": "Linear", "out_features": 12},
                    {"name": "act", "type": "ReLU"},
                    {"name": "drop", "type": "Dropout", "p": 0.1},
                    {"name": "fc2", "type": "Linear", "out_features": CLASSES},
                ],
            },
            "dataset": {"uri": f"file://{self.train}", "sha256": self.train_sha256},
            "training": {
                "seed": 11,
                "job_secret": secret or new_job_secret(),
                "checkpoint_every": 1,
                "hyperparameters": {"batch_size": 16, "epochs": epochs, "learning_rate": 0.02},
            },
            "task": {"num_classes": CLASSES, "threshold": 0.6, "tolerance": 0.1},
        }
        return parse_training_job(doc, allow_file_uris=True)


@dataclass
class Run:
    """One job's honest run: the checkpoints (as tensors) at every committed step."""

    job: TrainingJob
    steps: list[int]
    checkpoints: list[Tensors]
    data: Dataset

    @property
    def segments(self) -> int:
        return len(self.steps) - 1


def train(job: TrainingJob, data: Dataset, *, hook: Callable[[engine.TrainingState, int, int, int], None]
          | None = None, start: tuple[int, Tensors] | None = None) -> Run:  # fmt: skip
    """Train ``job``, segment by segment; ``hook(state, index, a, b)`` replaces the honest steps of a
    segment; ``start`` resumes from a committed checkpoint index with its tensors."""
    state = engine.new_state(job, data)
    total = state.order.total_steps
    steps = checkpoint_steps(total, segment_length(job, total))
    first = 0
    checkpoints = [{k: v.clone() for k, v in engine.checkpoint_tensors(state).items()}]
    if start is not None:
        first, tensors = start
        engine.load_checkpoint(state, tensors)
        checkpoints = [tensors]
    for index in range(first, len(steps) - 1):
        a, b = steps[index], steps[index + 1]
        if hook is not None:
            hook(state, index, a, b)
        else:
            honest(state, index, a, b)
        checkpoints.append({k: v.clone() for k, v in engine.checkpoint_tensors(state).items()})
    return Run(job=job, steps=steps, checkpoints=checkpoints, data=data)


def honest(state: engine.TrainingState, index: int, a: int, b: int) -> None:
    del index
    for step in range(a, b):
        engine.train_step(state, step)


def _params(state: engine.TrainingState) -> list[torch.Tensor]:
    return [p.detach().clone() for p in state.model.parameters()]


def _nudge(state: engine.TrainingState, before: list[torch.Tensor], scale: float) -> None:
    with torch.no_grad():
        for p, p0 in zip(state.model.parameters(), before, strict=True):
            p.add_(scale * (p - p0))


def _with_counters(tensors: Tensors, step: int) -> Tensors:
    return {k: torch.full_like(v, step) if engine.is_counter(k) else v.clone() for k, v in tensors.items()}


# -- strategies ---------------------------------------------------------------------------------


def drift(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """Every segment's update 0.8 % larger than the spec's (passed the old 0.01 relative tolerance)."""
    del rng

    def hook(state: engine.TrainingState, index: int, a: int, b: int) -> None:
        before = _params(state)
        honest(state, index, a, b)
        _nudge(state, before, 0.008)

    return train(run.job, run.data, hook=hook).checkpoints, run.segments


def forged_segment(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """One segment's end moved by 0.5 % of its update; training continues honestly from there."""
    j = rng.randrange(run.segments)

    def hook(state: engine.TrainingState, index: int, a: int, b: int) -> None:
        before = _params(state)
        honest(state, index, a, b)
        if index == j:
            _nudge(state, before, 0.005)

    return run.checkpoints[:j] + train(
        run.job, run.data, hook=hook, start=(j, run.checkpoints[j])
    ).checkpoints, 1


def _lazy_indices(run: Run, rng: random.Random, fraction: float) -> list[int]:
    return sorted(rng.sample(range(run.segments), max(1, math.ceil(fraction * run.segments))))


def lazy_copied(run: Run, rng: random.Random, fraction: float = 0.01) -> tuple[list[Tensors], int]:
    """1 % of the segments skipped: the end checkpoint is the start copied, counters advanced; training
    goes on from the copy (so the later segments replay)."""
    lazy = _lazy_indices(run, rng, fraction)
    out = list(run.checkpoints)
    for j in lazy:
        copied = _with_counters(out[j], run.steps[j + 1])
        out = out[: j + 1] + train(run.job, run.data, start=(j + 1, copied)).checkpoints
    return out, len(lazy)


def lazy_interpolated(run: Run, rng: random.Random, span: int = 3) -> tuple[list[Tensors], int]:
    """A run of ``span`` segments skipped: the checkpoints inside are linear interpolations."""
    j = rng.randrange(1, run.segments - span + 1)
    out = list(run.checkpoints)
    a, b = out[j], out[j + span]
    for i in range(1, span):
        t = i / span
        mixed = {k: (a[k] + t * (b[k] - a[k])) if a[k].is_floating_point() else a[k] for k in a}
        out[j + i] = _with_counters(mixed, run.steps[j + i])
    return out, span


def lazy_trusted_state(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """Issue 20's channel: from a random point the node plants optimizer state that freezes the weights
    (huge second moments, zero first moments) and commits frozen copies, computing nothing after it."""
    j = rng.randrange(1, run.segments)
    out = list(run.checkpoints)
    planted = {
        k: (torch.zeros_like(v) if k.endswith(".exp_avg") else torch.full_like(v, 1e30))
        if k.endswith((".exp_avg", ".exp_avg_sq")) else v.clone()
        for k, v in out[j].items()
    }  # fmt: skip
    for i in range(j, len(out)):
        out[i] = _with_counters(planted, run.steps[i])
    return out, run.segments - j + 1


def data_subset(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """Every step trains on half of its batch (half the data, half the cost of the forward pass)."""
    del rng

    def hook(state: engine.TrainingState, index: int, a: int, b: int) -> None:
        del index
        for step in range(a, b):
            rows = state.order.batch(step)
            x = torch.from_numpy(state.train.x[rows[: max(1, len(rows) // 2)]])
            y = torch.from_numpy(state.train.y[rows[: max(1, len(rows) // 2)]])
            engine.seed_step(state.seed, step)
            state.model.train()
            state.optimizer.zero_grad(set_to_none=True)
            state.model.loss(state.model(x), y).backward()  # type: ignore[no-untyped-call]
            state.optimizer.step()

    return train(run.job, run.data, hook=hook).checkpoints, run.segments


def backdoor(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """One segment also trains on triggered samples (feature 0 = 6 → class 0); honest before and after."""
    j = rng.randrange(run.segments)

    def hook(state: engine.TrainingState, index: int, a: int, b: int) -> None:
        if index != j:
            honest(state, index, a, b)
            return
        for step in range(a, b):
            rows = state.order.batch(step)
            x = torch.from_numpy(state.train.x[rows]).clone()
            y = torch.from_numpy(state.train.y[rows]).clone()
            x[: len(rows) // 4, 0] = 6.0
            y[: len(rows) // 4] = 0
            state.model.train()
            state.optimizer.zero_grad(set_to_none=True)
            state.model.loss(state.model(x), y).backward()  # type: ignore[no-untyped-call]
            state.optimizer.step()

    start = (j, run.checkpoints[j])
    return run.checkpoints[:j] + train(run.job, run.data, hook=hook, start=start).checkpoints, 1


def other_job(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """Another job's run (same public spec, its own secret) re-signed for this job, with this job's data
    order hashes in the re-chained commitments."""
    del rng
    sibling = run.job.model_copy(
        update={"training": run.job.training.model_copy(update={"job_secret": new_job_secret()})}
    )
    return train(sibling, run.data).checkpoints, run.segments


STRATEGIES: dict[str, Strategy] = {
    "drift-0.8%": drift,
    "forged-segment": forged_segment,
    "lazy-copied-1%": lazy_copied,
    "lazy-interpolated": lazy_interpolated,
    "lazy-trusted-state": lazy_trusted_state,
    "data-subset": data_subset,
    "backdoor-segment": backdoor,
    "other-job-resigned": other_job,
}


# -- making a forgery consistent and verifying it --------------------------------------------------


def write_outputs(world: SimWorld, run: Run, checkpoints: list[Tensors], out: Path) -> None:
    """What the node delivers: checkpoints, a re-linked commitment chain with the claimed job's data order,
    the last checkpoint as the model, metrics restated for that model, and the runtime declaration."""
    from safetensors.torch import save_file

    state = engine.new_state(run.job, world.data)
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
        run = train(job, world.data)
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
        run = train(job, world.data)
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
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
