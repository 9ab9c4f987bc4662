"""The holdout-gap rule (F1): the claimed (validation) accuracy and the holdout accuracy are two samples
of one model's accuracy; a gap that sampling noise of the two sets explains is never called a lie, and
the bound tightens to the job's tolerance as the sets grow."""

from __future__ import annotations

import math

from cyxwiz.verification.replay import GAP_Z, holdout_gap_bound


def test_small_sets_widen_the_tolerance_to_what_noise_explains() -> None:
    # The digits reference: 144 validation rows, 359 holdout rows, accuracy ~0.93. Seen in CI: an honest
    # 2-epoch run claimed 0.9441 and held 0.8886 — a 0.055 gap, beyond the fixed 0.05, within noise.
    allowed, stderr = holdout_gap_bound(0.9441, 144, 0.8886, 359, 0.05)
    assert 0.02 < stderr < 0.03
    assert allowed == GAP_Z * stderr and allowed > 0.9441 - 0.8886


def test_large_sets_keep_the_jobs_tolerance_and_a_real_gap_still_fails() -> None:
    allowed, stderr = holdout_gap_bound(0.95, 100_000, 0.93, 100_000, 0.05)
    assert allowed == 0.05 and stderr < 0.002
    allowed, _ = holdout_gap_bound(0.99, 2_000, 0.80, 2_000, 0.05)
    assert allowed < 0.99 - 0.80  # a claim far above what the model does on unseen rows


def test_degenerate_inputs_stay_finite() -> None:
    for args in ((1.0, 0, 0.0, 0), (1.2, 10, -0.1, 10), (0.5, 1, 0.5, 1)):
        allowed, stderr = holdout_gap_bound(*args, 0.05)
        assert math.isfinite(allowed) and math.isfinite(stderr) and allowed >= 0.05
