"""Checks of the training trace: commitments, endpoints, metrics, and the replay spot check.

Proof-of-learning style: the node committed to a checkpoint every k steps; the verifier (trusted, holding
the signed spec and the training file) recomputes the data order, checks that the first checkpoint is the
seeded initialisation and the last is the delivered model, and replays ``m`` randomly chosen segments
from their starting checkpoint, comparing the result with the committed end checkpoint. A node that
faked a fraction ``f`` of the segments escapes with probability at most ``(1-f)^m``.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cyxwiz.errors import CyxwizError
from cyxwiz.training import engine
from cyxwiz.training.data import Dataset
from cyxwiz.training.runtime import CLAIMED_METRIC, MODEL_FILE, checkpoint_name, checkpoint_steps
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.commitments import COMMITMENTS_FILE, Commitment, check_chain, commitments_root
from cyxwiz.verification.proof import CompletionProof
from cyxwiz.verification.report import Check

#: 1-(1-0.1)^29 = 0.953: catches a node that faked 10 % of its segments with ≥ 95 % probability.
DEFAULT_DETECT_FRACTION = 0.1
DEFAULT_CONFIDENCE = 0.95


def required_segments(fraction: float, confidence: float) -> int:
    """Smallest m with 1-(1-fraction)^m ≥ confidence."""
    return max(1, math.ceil(math.log(1 - confidence) / math.log(1 - fraction)))


def detection_probability(fraction: float, segments: int) -> float:
    return 1 - (1 - fraction) ** segments


@dataclass(frozen=True)
class ReplayPolicy:
    #: Segments to replay; ``None`` = enough to detect ``detect_fraction`` faked segments at ``confidence``.
    segments: int | None = None
    detect_fraction: float = DEFAULT_DETECT_FRACTION
    confidence: float = DEFAULT_CONFIDENCE
    #: Largest accepted ‖replayed − committed‖ / ‖committed − start‖ for a segment (honest runs: ~1e-7).
    distance_tolerance: float = 0.01
    #: Seed of the segment choice; ``None`` draws it from the OS so a node cannot predict it.
    sample_seed: int | None = None

    def count(self, available: int) -> int:
        wanted = self.segments or required_segments(self.detect_fraction, self.confidence)
        return min(wanted, available)


def check_commitments(
    job: TrainingJob, state: engine.TrainingState, proof: CompletionProof, commitments: Sequence[Commitment]
) -> Check:
    """Root, chain, schedule, checkpoint hashes and data order of the committed checkpoints."""
    total, every = state.order.total_steps, job.training.checkpoint_every
    if (
        commitments_root(commitments) != proof.checkpoints.merkle_root
        or len(commitments) != proof.checkpoints.count
    ):
        return Check("commitments", False, "commitments.json does not match the Merkle root the proof signs")
    try:
        check_chain(commitments)
    except CyxwizError as exc:
        return Check("commitments", False, f"broken commitment chain: {exc.message} ({exc.field})")
    expected = checkpoint_steps(total, every)
    steps = [c.step for c in commitments]
    if steps != expected:
        missing = sorted(set(expected) - set(steps))[:5]
        extra = sorted(set(steps) - set(expected))[:5]
        return Check(
            "commitments",
            False,
            f"checkpoint schedule differs from the spec (every {every} of {total} "
            f"steps): missing {missing}, unexpected {extra}",
            {"committed": len(steps), "expected": len(expected)},
        )
    prev = 0
    for c in commitments:
        if c.path != checkpoint_name(c.step) or proof.artifacts.get(c.path) != c.weights_sha256:
            return Check("commitments", False, f"checkpoint of step {c.step} is not the committed file")
        if c.batch_indices_sha256 != state.order.segment_sha256(prev, c.step):
            return Check(
                "commitments",
                False,
                f"batch indices committed at step {c.step} are not the data order of the spec's seed",
            )
        prev = c.step
    return Check(
        "commitments",
        True,
        f"{len(commitments)} checkpoints every {every} steps, chain and data order match the spec",
        {"checkpoints": len(commitments), "steps": total},
    )


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_endpoints(
    job: TrainingJob, data: Dataset, output_dir: Path, commitments: Sequence[Commitment]
) -> Check:
    """The first checkpoint is the seeded initialisation; the last is the delivered model."""
    fresh = engine.new_state(job, data)
    first = engine.read_checkpoint(output_dir / commitments[0].path)
    if not _same(engine.checkpoint_tensors(fresh), first):
        return Check(
            "endpoints",
            False,
            "the step-0 checkpoint is not the initialisation of the spec's seed "
            "(changed seed or weights from elsewhere)",
        )
    last = {
        k.removeprefix("model."): v
        for k, v in engine.read_checkpoint(output_dir / commitments[-1].path).items()
        if k.startswith("model.")
    }
    delivered = engine.read_checkpoint(output_dir / MODEL_FILE)
    if not _same(last, delivered):
        return Check("endpoints", False, "the delivered model is not the last committed checkpoint")
    return Check("endpoints", True, "step-0 checkpoint = seeded initialisation; model = last checkpoint")


def check_metrics(
    job: TrainingJob, data: Dataset, holdout: Dataset, output_dir: Path, proof: CompletionProof
) -> list[Check]:
    """Recompute the claimed metric exactly; evaluate on the holdout the node never received."""
    state = engine.new_state(job, data)
    weights = engine.read_checkpoint(output_dir / MODEL_FILE)
    state.model.load_state_dict(weights, strict=True)
    claimed = proof.metrics.get(CLAIMED_METRIC)
    recomputed = engine.evaluate(state.model, state.validation)["accuracy"]
    held = engine.evaluate(state.model, holdout)["accuracy"]
    checks: list[Check] = []
    # One sample of slack: a node on another device may flip one borderline argmax.
    slack = 1 / max(1, len(state.validation)) + 1e-9
    if claimed is None:
        checks.append(Check("claimed-metric", False, f"the proof claims no {CLAIMED_METRIC}"))
    elif abs(claimed - recomputed) > slack:
        checks.append(
            Check(
                "claimed-metric",
                False,
                f"claimed {CLAIMED_METRIC} {claimed:.4f} but the delivered "
                f"model scores {recomputed:.4f} (inflated metric)",
                {"claimed": claimed, "recomputed": recomputed},
            )
        )
    else:
        checks.append(
            Check(
                "claimed-metric",
                True,
                f"{CLAIMED_METRIC} {recomputed:.4f} reproduced",
                {"claimed": claimed, "recomputed": recomputed},
            )
        )
    task = job.task
    details = {
        "holdout_accuracy": held,
        "threshold": task.threshold,
        "tolerance": task.tolerance,
        "holdout_size": len(holdout),
    }
    if held < task.threshold:
        checks.append(
            Check(
                "holdout",
                False,
                f"holdout accuracy {held:.4f} is below the job's threshold {task.threshold}",
                details,
            )
        )
    elif claimed is not None and held < claimed - task.tolerance:
        checks.append(
            Check(
                "holdout",
                False,
                f"holdout accuracy {held:.4f} is more than {task.tolerance} below the claimed {claimed:.4f}",
                details,
            )
        )
    else:
        checks.append(
            Check("holdout", True, f"holdout accuracy {held:.4f} ≥ threshold {task.threshold}", details)
        )
    return checks


def check_replay(
    job: TrainingJob, data: Dataset, output_dir: Path, commitments: Sequence[Commitment], policy: ReplayPolicy
) -> Check:
    """Replay ``m`` random segments from their committed start and compare with the committed end."""
    available = len(commitments) - 1
    m = policy.count(available)
    # The OS generator unless a seed is given: a node must not be able to predict which segments are replayed.
    rng: random.Random = (
        secrets.SystemRandom() if policy.sample_seed is None else random.Random(policy.sample_seed)  # noqa: S311
    )
    chosen = sorted(rng.sample(range(available), m)) if m else []
    state = engine.new_state(job, data)
    worst = 0.0
    details: dict[str, object] = {
        "segments_total": available,
        "segments_replayed": m,
        "detection_probability": detection_probability(policy.detect_fraction, m),
        "detect_fraction": policy.detect_fraction,
    }
    for index in chosen:
        start, end = commitments[index], commitments[index + 1]
        before = engine.read_checkpoint(output_dir / start.path)
        engine.load_checkpoint(state, before)
        for step in range(start.step, end.step):
            engine.train_step(state, step)
        replayed = engine.flat_parameters(engine.checkpoint_tensors(state))
        claimed = engine.flat_parameters(engine.read_checkpoint(output_dir / end.path))
        origin = engine.flat_parameters(before)
        if replayed.shape != claimed.shape or claimed.shape != origin.shape:
            return Check("replay", False, f"checkpoint of step {end.step} has another shape", details)
        distance = float(
            torch.linalg.vector_norm(replayed - claimed)
            / max(float(torch.linalg.vector_norm(claimed - origin)), 1e-12)
        )
        worst = max(worst, distance) if math.isfinite(distance) else math.inf
        if not distance <= policy.distance_tolerance:
            details["worst_distance"] = worst
            return Check(
                "replay",
                False,
                f"segment {start.step}→{end.step} does not reproduce: distance "
                f"{distance:.3g} > {policy.distance_tolerance} (fewer steps, other seed or learning "
                "rate, or a forged checkpoint)",
                details,
            )
    details["worst_distance"] = worst
    details["chosen"] = [commitments[i].step for i in chosen]
    return Check(
        "replay",
        True,
        f"{m} of {available} segments reproduce (worst distance {worst:.2g}); "
        f"detects {policy.detect_fraction:.0%} faked segments with p={details['detection_probability']:.3f}",
        details,
    )


def missing_required(proof: CompletionProof) -> list[str]:
    return [name for name in (MODEL_FILE, COMMITMENTS_FILE, "metrics.json") if name not in proof.artifacts]
