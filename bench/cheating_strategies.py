"""The cheating strategies of the simulator (issue 20; SPEC F1): each turns the honest run of the claimed
job into the checkpoints a cheat commits, and says how many segments it faked. See
:mod:`bench.cheating_node`."""

from __future__ import annotations

import math
import random

import torch

from bench.cheating_world import Run, Strategy, Tensors, honest, train
from cyxwiz.training import engine
from cyxwiz.verification.binding import new_job_secret


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

    return train(run.job, run.data, trainer=run.trainer, hook=hook).checkpoints, run.segments


def forged_segment(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """One segment's end moved by 0.5 % of its update; training continues honestly from there."""
    j = rng.randrange(run.segments)

    def hook(state: engine.TrainingState, index: int, a: int, b: int) -> None:
        before = _params(state)
        honest(state, index, a, b)
        if index == j:
            _nudge(state, before, 0.005)

    return run.checkpoints[:j] + train(
        run.job, run.data, trainer=run.trainer, hook=hook, start=(j, run.checkpoints[j])
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
        out = out[: j + 1] + train(run.job, run.data, trainer=run.trainer, start=(j + 1, copied)).checkpoints
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

    return train(run.job, run.data, trainer=run.trainer, hook=hook).checkpoints, run.segments


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
    return run.checkpoints[:j] + train(
        run.job, run.data, trainer=run.trainer, hook=hook, start=start
    ).checkpoints, 1


def other_job(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """Another job's run (same public spec, its own secret) re-signed for this job, with this job's data
    order hashes in the re-chained commitments."""
    del rng
    sibling = run.job.model_copy(
        update={"training": run.job.training.model_copy(update={"job_secret": new_job_secret()})}
    )
    return train(sibling, run.data, trainer=run.trainer).checkpoints, run.segments


def other_node(run: Run, rng: random.Random) -> tuple[list[Tensors], int]:
    """This job (same spec, same secret) trained for another node's PeerID and re-signed by this node
    with this node's data order hashes in the re-chained commitments: a coordinator that reassigned the
    job after another node did the work (issue 17)."""
    from cyxwiz.pki.keys import generate_ed25519
    from cyxwiz.pki.peerid import peer_id

    del rng
    return train(run.job, run.data, trainer=peer_id(generate_ed25519())).checkpoints, run.segments


STRATEGIES: dict[str, Strategy] = {
    "drift-0.8%": drift,
    "forged-segment": forged_segment,
    "lazy-copied-1%": lazy_copied,
    "lazy-interpolated": lazy_interpolated,
    "lazy-trusted-state": lazy_trusted_state,
    "data-subset": data_subset,
    "backdoor-segment": backdoor,
    "other-job-resigned": other_job,
    "other-node-resigned": other_node,
}
