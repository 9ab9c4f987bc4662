"""Adaptive sampling (issue 20; SPEC F1): hypergeometric detection, the budget, the spec validator and
the checkpoint schedule that makes the target fit."""

from __future__ import annotations

import random
from math import comb

import pytest

from cyxwiz.errors import ValidationError
from cyxwiz.training.spec import parse_training_job
from cyxwiz.verification.sampling import (
    check_target,
    faked_segments,
    minimum_segments,
    miss_probability,
    plan_for_job,
    plan_sampling,
    required_samples,
    segment_steps,
    total_steps,
)
from tests.training.conftest import training_doc

DEFAULTS = {"target_fraction": 0.01, "confidence": 0.99, "budget": 0.10}


@pytest.mark.parametrize(("n_total", "faked", "samples"), [(308, 4, 30), (5000, 50, 438), (100, 10, 0)])
def test_miss_probability_is_the_hypergeometric_ratio(n_total: int, faked: int, samples: int) -> None:
    expected = comb(n_total - faked, samples) / comb(n_total, samples)
    assert miss_probability(n_total, faked, samples) == pytest.approx(expected, rel=1e-12)


def test_miss_probability_matches_a_simulation() -> None:
    rng = random.Random(5)
    faked = set(range(3))
    misses = sum(not faked & set(rng.sample(range(40), 8)) for _ in range(20_000))
    assert misses / 20_000 == pytest.approx(miss_probability(40, 3, 8), abs=0.01)


def test_the_target_fits_a_5000_segment_job_within_the_budget() -> None:
    plan = plan_sampling(5000, **DEFAULTS)
    assert (plan.faked, plan.samples, plan.fits) == (50, 438, True)
    assert plan.detection_probability >= 0.99 and plan.samples <= 0.10 * 5000
    assert required_samples(5000, 0.01, 0.99) == 438


def test_a_small_job_reports_what_it_achieves() -> None:
    plan = plan_sampling(308, **DEFAULTS)
    assert not plan.fits and plan.samples == 30 and plan.budget_samples == 30
    assert 0.3 < plan.detection_probability < 0.35
    assert "too small" in plan.describe() and "0.33" in plan.describe()
    assert plan_sampling(5, **DEFAULTS).samples == 1  # every job replays one segment at least


def test_auto_schedule_makes_the_target_fit_where_the_job_is_large_enough() -> None:
    need = minimum_segments(**DEFAULTS)
    assert plan_sampling(need, **DEFAULTS).fits and not plan_sampling(need - 1, **DEFAULTS).fits
    every = segment_steps(20_000, requested="auto", **DEFAULTS)
    assert every == 20_000 // need and plan_sampling(-(-20_000 // every), **DEFAULTS).fits
    assert segment_steps(300, requested="auto", **DEFAULTS) == 1  # too small: the most it can get
    assert segment_steps(300, requested=7, **DEFAULTS) == 7  # an explicit schedule is kept


def test_strict_spec_too_small_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        check_target(300, requested="auto", strict=True, **DEFAULTS)
    assert info.value.field == "verification.target_fraction" and info.value.rule == "F1"
    assert "too small" in info.value.message and str(minimum_segments(**DEFAULTS)) in (info.value.hint or "")
    assert check_target(300, requested="auto", strict=False, **DEFAULTS).samples == 30


def test_plan_for_job_counts_the_steps_the_runtime_will_run() -> None:
    doc = training_doc(verification={"target_fraction": 0.05, "strict": True})
    doc["training"].update({"checkpoint_every": "auto", "hyperparameters": {"batch_size": 8, "epochs": 40}})
    job = parse_training_job(doc)
    assert total_steps(job, train_rows=1438) == 162 * 40
    plan = plan_for_job(job, train_rows=1438)
    assert plan.fits and plan.detection_probability >= 0.99
    assert faked_segments(plan.segments, 0.05) == plan.faked


def test_verification_section_ranges_are_validated() -> None:
    for bad in ({"target_fraction": 0}, {"confidence": 1}, {"budget": 2}, {"mode": "trust-me"}):
        with pytest.raises(ValidationError) as info:
            parse_training_job(training_doc(verification=bad))
        assert (info.value.field or "").startswith("verification.")
