"""The honest run must pass on repeat: 20 seeds, 20 different segment choices, no false rejection
(issue 7 acceptance). Also the replay distances of honest runs stay far below the tolerance."""

from __future__ import annotations

import pytest

from cyxwiz.verification.replay import ReplayPolicy
from tests.verification.conftest import World, reference_job, train_variant, write_job

pytestmark = pytest.mark.slow


def test_twenty_seeds_all_pass(world: World) -> None:
    worst = 0.0
    for seed in range(100, 120):
        doc = reference_job(world.digits, job_id=f"seed-{seed}", seed=seed)
        out = train_variant(world, f"seed-{seed}", doc)
        _, job = write_job(world.tmp / f"seed-{seed}-job", doc)
        report = world.verify(out, world.sign(out, job=job), job=job, policy=ReplayPolicy(sample_seed=seed))
        assert report.passed, report.to_markdown()
        assert report.summary["holdout_accuracy"] >= 0.9
        worst = max(worst, report.check("replay").details["worst_distance"])
    assert worst == 0.0  # CPU↔CPU: every replayed segment reproduces bit for bit
