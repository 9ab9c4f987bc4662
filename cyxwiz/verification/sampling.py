"""How many segments to replay, and how long a segment is (issue 20: adaptive sampling, SPEC F1).

A node that faked ``k`` of its ``N`` segments escapes a replay of ``n`` segments drawn without
replacement with the hypergeometric probability ``C(N-k, n) / C(N, n)``. The job spec states the target
(catch ``target_fraction`` faked segments with probability ``confidence``) and the budget (replay at most
``budget`` of the training work); :func:`plan_sampling` picks ``n`` and says what the job achieves when
the target does not fit, and :func:`segment_steps` picks the checkpoint schedule so it fits where the
job has enough steps. Pure arithmetic: no torch, safe to import anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cyxwiz.errors import ValidationError

if TYPE_CHECKING:
    from cyxwiz.training.spec import TrainingJob

#: Searching the segment count beyond this is pointless: 10 million checkpoints are not a real job.
_MAX_SEGMENTS = 10_000_000


def faked_segments(segments: int, fraction: float) -> int:
    """The fewest faked segments that make up ``fraction`` of the work (at least one)."""
    return max(1, math.ceil(fraction * segments - 1e-9))


def miss_probability(segments: int, faked: int, samples: int) -> float:
    """P(no faked segment among ``samples`` drawn without replacement) = C(N-k, n) / C(N, n)."""
    if faked <= 0:
        return 1.0
    if samples > segments - faked:
        return 0.0
    # The ratio telescopes to ∏_{i<k} (N-n-i)/(N-i): k factors, exact enough in floats for k ≤ N.
    p = 1.0
    for i in range(faked):
        p *= (segments - samples - i) / (segments - i)
        if p == 0.0:
            break
    return p


def required_samples(segments: int, fraction: float, confidence: float) -> int:
    """Smallest n with 1 - miss_probability(N, k, n) ≥ confidence (N when even all cannot reach it)."""
    if segments <= 0:
        return 0
    faked = faked_segments(segments, fraction)
    low, high = 0, segments
    while low < high:  # miss_probability falls as n grows: bisect for the first n that reaches the target
        mid = (low + high) // 2
        if 1.0 - miss_probability(segments, faked, mid) >= confidence:
            high = mid
        else:
            low = mid + 1
    return low


@dataclass(frozen=True, kw_only=True)
class SamplingPlan:
    """What the replay does and what it buys: the report states every field."""

    segments: int
    faked: int
    samples: int
    required: int
    budget_samples: int
    target_fraction: float
    confidence: float
    detection_probability: float

    @property
    def fits(self) -> bool:
        return self.required <= self.budget_samples

    def describe(self) -> str:
        achieved = (
            f"P(detect {self.faked} faked of {self.segments} segments) = {self.detection_probability:.4f}"
        )
        if self.fits:
            return f"{self.samples} of {self.segments} segments; {achieved} (target met within budget)"
        return (
            f"{self.samples} of {self.segments} segments; {achieved}: the job is too small for "
            f"{self.target_fraction:.2%} at {self.confidence:.0%} within the budget "
            f"({self.required} replays needed, {self.budget_samples} affordable)"
        )


def plan_sampling(
    segments: int, *, target_fraction: float, confidence: float, budget: float, samples: int | None = None
) -> SamplingPlan:
    """The replay count for a job of ``segments`` segments: what the target needs, capped by the budget
    (one segment at least, so every job gets some replay); ``samples`` overrides it (CLI, tests)."""
    required = required_samples(segments, target_fraction, confidence)
    affordable = math.floor(budget * segments + 1e-9)
    chosen = min(required, affordable) if samples is None else samples
    chosen = max(0, min(segments, max(1, chosen) if segments else 0))
    faked = faked_segments(segments, target_fraction)
    return SamplingPlan(
        segments=segments,
        faked=faked,
        samples=chosen,
        required=required,
        budget_samples=affordable,
        target_fraction=target_fraction,
        confidence=confidence,
        detection_probability=1.0 - miss_probability(segments, faked, chosen) if segments else 0.0,
    )


def minimum_segments(*, target_fraction: float, confidence: float, budget: float) -> int:
    """The fewest segments for which the target fits the budget (the checkpoint schedule aims here)."""
    # Fits is not monotone step by step (ceil in k), so bisect on a coarse bound and walk to the first fit.
    low, high = 1, 1
    while high < _MAX_SEGMENTS and not _fits(high, target_fraction, confidence, budget):
        low, high = high, high * 2
    while low < high:
        mid = (low + high) // 2
        if _fits(mid, target_fraction, confidence, budget):
            high = mid
        else:
            low = mid + 1
    return high


def _fits(segments: int, fraction: float, confidence: float, budget: float) -> bool:
    return required_samples(segments, fraction, confidence) <= math.floor(budget * segments + 1e-9)


def segment_steps(
    total_steps: int,
    *,
    requested: int | Literal["auto"],
    target_fraction: float,
    confidence: float,
    budget: float,
) -> int:
    """Steps per segment. ``auto``: the longest segments that still give enough segments for the target
    to fit the budget; a job with fewer steps than that gets one-step segments (the most it can achieve)."""
    if requested != "auto":
        return requested
    wanted = minimum_segments(target_fraction=target_fraction, confidence=confidence, budget=budget)
    return max(1, total_steps // wanted)


def check_target(
    total_steps: int,
    *,
    requested: int | Literal["auto"],
    target_fraction: float,
    confidence: float,
    budget: float,
    strict: bool,
) -> SamplingPlan:
    """The spec validator's view of the job: the plan, or ValidationError when ``strict`` and the target
    does not fit the budget (the message says how many steps or segments would)."""
    every = segment_steps(
        total_steps,
        requested=requested,
        target_fraction=target_fraction,
        confidence=confidence,
        budget=budget,
    )
    plan = plan_sampling(
        math.ceil(total_steps / every) if total_steps else 0,
        target_fraction=target_fraction,
        confidence=confidence,
        budget=budget,
    )
    if strict and not plan.fits:
        need = minimum_segments(target_fraction=target_fraction, confidence=confidence, budget=budget)
        raise ValidationError(
            plan.describe(),
            field="verification.target_fraction",
            rule="F1",
            hint=f"the target needs at least {need} segments (steps with checkpoint_every=1); "
            f"train longer, raise the budget or the fraction, or lower the confidence",
        )
    return plan


def total_steps(job: TrainingJob, *, train_rows: int) -> int:
    """Optimizer steps of ``job`` on a training file of ``train_rows`` rows (what DataOrder will count)."""
    hp = job.training.hyperparameters
    rows = train_rows - int(train_rows * job.training.validation_fraction)
    return math.ceil(rows / hp.batch_size) * hp.epochs if rows > 0 else 0


def plan_for_job(job: TrainingJob, *, train_rows: int) -> SamplingPlan:
    """The spec validator (issue 20): the job's sampling plan, or ValidationError when the spec says
    ``strict`` and the target does not fit the budget."""
    v = job.verification
    return check_target(
        total_steps(job, train_rows=train_rows),
        requested=job.training.checkpoint_every,
        target_fraction=v.target_fraction,
        confidence=v.confidence,
        budget=v.budget,
        strict=v.strict,
    )
