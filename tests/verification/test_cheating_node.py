"""The cheating-node simulator against ``verify_job`` (issue 20 acceptance; SPEC F1, threat "malicious
node"). Every forgery is re-hashed, re-chained and re-signed with the node's key, so only the training
checks can tell. Replaying every segment makes each detection certain; the bench (bench_verification)
runs ≥ 200 of each under the default sampling."""

from __future__ import annotations

import pytest

from bench.cheating_node import STRATEGIES, SimWorld, honest_runs, simulate, wilson_interval

pytestmark = pytest.mark.slow

#: The check that must catch each strategy first.
CAUGHT_BY = {
    "drift-0.8%": "replay",
    "forged-segment": "replay",
    "lazy-copied-1%": "replay",
    "lazy-interpolated": "replay",
    "lazy-trusted-state": "replay",
    "data-subset": "replay",
    "backdoor-segment": "replay",
    "other-job-resigned": "endpoints",
    "other-node-resigned": "endpoints",  # issue 17: the run belongs to the PeerID that trained it
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimWorld:
    return SimWorld.create(tmp_path_factory.mktemp("sim"))


def test_every_strategy_is_caught_by_its_check_when_all_segments_replay(sim: SimWorld) -> None:
    assert set(CAUGHT_BY) == set(STRATEGIES)
    tallies = simulate(sim, list(STRATEGIES), jobs=1, replay_all=True, seed=4)
    for name, tally in tallies.items():
        assert (tally.runs, tally.detected) == (1, 1), name
        assert tally.caught_by == {CAUGHT_BY[name]: 1}, (name, tally.caught_by)


def test_honest_runs_pass_under_the_default_sampling(sim: SimWorld) -> None:
    tally = honest_runs(sim, runs=3)
    assert (tally.runs, tally.detected) == (3, 0)  # positive control: no false rejection


def test_sampled_detection_follows_the_hypergeometric_prediction(sim: SimWorld) -> None:
    # Whole-trace cheats are caught by any sample; a single forged segment only when it is drawn.
    tallies = simulate(sim, ["drift-0.8%", "forged-segment"], jobs=1, verifications=3, seed=5)
    assert tallies["drift-0.8%"].detected == 3 and tallies["drift-0.8%"].expected == [1.0] * 3
    assert all(0 < p < 0.2 for p in tallies["forged-segment"].expected)


def test_wilson_interval() -> None:
    low, high = wilson_interval(200, 200)
    assert high == 1.0 and 0.98 < low < 0.99
    assert wilson_interval(0, 200)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 1.0)
