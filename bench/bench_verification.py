"""Issue 20: does verification catch a node that fakes 1 % of its work, and what does it cost?

Part 1 — the cheating-node simulator (``bench/cheating_node.py``) against ``verify_job``: ≥ 200 honest
runs (each a fresh job with its own secret) and ≥ 200 verifications per strategy, each with its own OS-random
segment choice; detection rate with a 95 % Wilson interval, the check that caught it, and the mean
hypergeometric prediction for the sample drawn.

Part 2 — a job of ≥ 5,000 segments at the default target (1 % at 99 %, budget 10 %): verification time ÷
training time (both the project's own code on this CPU) and the detection rate for a node that skipped the
last 1 % of its segments (copied its checkpoint forward, counters advanced, re-chained and re-signed).
Each faked segment's verdict is a bit-exact replay, so it is deterministic: the bench replays every faked
segment once (all must fail), runs ``verify_job`` end to end on the forgery, and then draws the segment
sample with the verifier's own sampler ``CYXWIZ_BENCH_DRAWS`` times (default 10,000) to measure how often
it contains a faked segment.

``python -m bench.bench_verification [--part 1|2] [--runs N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIG_EPOCHS = 1429  # × 14 steps = 20,006 steps; every 4 steps → 5,002 segments


def part_one(
    root: Path, *, runs: int, save: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    from bench.cheating_node import STRATEGIES, SimWorld, honest_runs, simulate

    world = SimWorld.create(root / "sim")
    started = time.perf_counter()
    out: dict[str, Any] = {"job": {"segments": 56, "steps": 56, "parameters": 147, "budget_replays": 5}}

    def checkpoint(done: int, tallies: Any) -> None:
        if isinstance(tallies, dict):
            out["strategies"] = {k: _row(v) for k, v in tallies.items()}
        else:
            out["honest"] = _row(tallies)
        out["seconds"] = round(time.perf_counter() - started, 1)
        out["progress"] = done
        if save is not None:
            save(out)

    jobs = max(1, runs // 8)
    tallies = simulate(
        world, list(STRATEGIES), jobs=jobs, verifications=-(-runs // jobs), seed=20, progress=checkpoint
    )
    checkpoint(jobs, tallies)
    honest = honest_runs(world, runs=runs, progress=checkpoint)
    checkpoint(runs, honest)
    out.pop("progress", None)
    return out


def _row(tally: Any) -> dict[str, Any]:
    low, high = tally.wilson()
    expected = sum(tally.expected) / len(tally.expected) if tally.expected else None
    return {
        "runs": tally.runs,
        "detected": tally.detected,
        "rate": tally.rate,
        "ci95": [round(low, 4), round(high, 4)],
        "caught_by": tally.caught_by,
        "expected": expected,
    }


def part_two(root: Path) -> dict[str, Any]:
    import torch

    from bench.cheating_node import SimWorld, Tally, sign, sign_and_verify, train, verify, write_outputs
    from cyxwiz.training import engine
    from cyxwiz.training.runtime import RecordingReporter, run_training
    from cyxwiz.verification.replay import ReplayPolicy, choose_segments
    from cyxwiz.verification.trace import StateSchemas

    world = SimWorld.create(root / "big")
    job = world.job("big-job", epochs=BIG_EPOCHS)
    job = job.model_copy(update={"training": job.training.model_copy(update={"checkpoint_every": 4})})
    (root / "big-job.json").write_text(json.dumps(job.model_dump(mode="json")), encoding="utf-8")
    # CPU seconds of this process as well as wall time: on a shared machine the load moves between the two
    # measurements, the CPU time each side needed does not.
    started, cpu = time.perf_counter(), time.process_time()
    summary = run_training(
        root / "big-job.json",
        data_path=world.train,
        output_dir=root / "honest",
        reporter=RecordingReporter(),
        trainer=world.trainer,
    )
    train_s, train_cpu = time.perf_counter() - started, time.process_time() - cpu
    proof = sign(world, job, root / "honest")  # the node's side, not timed
    started, cpu = time.perf_counter(), time.process_time()
    report = verify(world, job, root / "honest", proof, policy=ReplayPolicy())
    verify_s, verify_cpu = time.perf_counter() - started, time.process_time() - cpu
    if not report.passed:
        raise RuntimeError("the honest 5,000-segment job failed: " + "; ".join(report.reasons()))
    replay = report.check("replay").details

    # The forgery: the node stops after 99 % of its segments and copies its checkpoint forward.
    engine.make_deterministic()
    run = train(job, world.data, trainer=world.trainer)
    faked = max(1, -(-run.segments // 100))
    stop = run.segments - faked
    forged = list(run.checkpoints)
    for i in range(stop + 1, len(forged)):
        forged[i] = {
            k: torch.full_like(v, run.steps[i]) if engine.is_counter(k) else v.clone()
            for k, v in forged[stop].items()
        }
    write_outputs(world, run, forged, root / "forged")
    schemas = StateSchemas.of(job, world.data, trainer=world.trainer)
    del schemas  # the verifier builds its own; built here once to warm the same code path
    caught_each = 0
    state = engine.new_state(job, world.data, trainer=world.trainer)
    for j in range(stop, run.segments):
        engine.load_checkpoint(state, forged[j])
        for step in range(run.steps[j], run.steps[j + 1]):
            engine.train_step(state, step)
        replayed = engine.checkpoint_tensors(state)
        caught_each += not all(torch.equal(replayed[k], forged[j + 1][k]) for k in replayed)
    end_to_end = Tally()
    for _ in range(2):
        end_to_end.add(sign_and_verify(world, job, root / "forged", policy=ReplayPolicy()))
    draws = int(os.environ.get("CYXWIZ_BENCH_DRAWS", "10000"))
    n = int(replay["segments_replayed"])
    faked_set = set(range(stop, run.segments))
    hits = Tally()
    for _ in range(draws):
        hits.runs += 1
        hits.detected += bool(faked_set & set(choose_segments(run.segments, n, ReplayPolicy())))
    low, high = hits.wilson()
    return {
        "segments": int(replay["segments_total"]),
        "steps": summary.steps,
        "replayed": n,
        "predicted_detection": replay["detection_probability"],
        "train_s": round(train_s, 2),
        "verify_s": round(verify_s, 2),
        "train_cpu_s": round(train_cpu, 2),
        "verify_cpu_s": round(verify_cpu, 2),
        "ratio": verify_cpu / train_cpu,
        "ratio_wall": verify_s / train_s,
        "faked_segments": faked,
        "faked_segments_caught_when_replayed": caught_each,
        "end_to_end_runs": end_to_end.runs,
        "end_to_end_detected": end_to_end.detected,
        "end_to_end_caught_by": end_to_end.caught_by,
        "draws": draws,
        "detection_rate": hits.rate,
        "detection_ci95": [round(low, 5), round(high, 5)],
        "tolerance": replay["tolerance"],
    }


def run() -> list[tuple[str, float, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        big = part_two(Path(tmp))
    return [
        (
            "verify / train (5,002 segments, default target)",
            big["ratio"],
            f"n={big['replayed']} of {big['segments']}; detection of 1 % faked {big['detection_rate']:.4f} "
            f"(95 % CI {big['detection_ci95'][0]:.4f}–{big['detection_ci95'][1]:.4f}, predicted "
            f"{big['predicted_detection']:.4f}); CPU train {big['train_cpu_s']} s, "
            f"verify {big['verify_cpu_s']} s",
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_verification")
    parser.add_argument("--part", choices=("1", "2", "all"), default="all")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("2", "all"):
            results["five_thousand_segments"] = part_two(Path(tmp))
            print(json.dumps(results["five_thousand_segments"], indent=1), flush=True)
        if args.part in ("1", "all"):

            def save(partial: dict[str, Any]) -> None:
                if args.json:
                    results["simulator"] = partial
                    args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

            results["simulator"] = part_one(Path(tmp), runs=args.runs, save=save)
            print(json.dumps(results["simulator"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
