"""GPU replay calibration (issue 20): train a short job on CUDA, replay segments GPU↔GPU and GPU↔CPU.

``python -m bench.gpu_replay --out DIR`` writes ``DIR/gpu_replay.json`` with, per model, the replay distances
of every segment: the node trains on the GPU in deterministic mode and commits a checkpoint every
``--every`` steps; the verifier replays each segment from the committed start on the GPU again and on the
CPU. Distance = ‖replayed − committed‖ / ‖committed − start‖ (float64), for the model tensors and the
optimizer tensors separately — the definition :mod:`cyxwiz.verification.tolerance` calibrates. A CPU↔CPU
replay runs as the control (expected: 0, bit for bit).

Runs on a GPU machine that has torch and numpy only: it imports nothing of the project but the torch-only
:mod:`cyxwiz.training.determinism` (seeding, deterministic settings, the portable dropout the runtime uses).
Without CUDA it still runs the CPU↔CPU control and says so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cyxwiz.training.determinism import PortableDropout, derived_seed, make_deterministic, seed_step

State = dict[str, torch.Tensor]
MODELS: dict[str, tuple[int, ...]] = {
    "reference-mlp-64-64-10": (64, 64, 10),
    "wide-mlp-64-512-512-10": (64, 512, 512, 10),
}


def build(widths: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(derived_seed(seed, "init"))  # built on the CPU, then moved: the same weights anywhere
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.ReLU(), PortableDropout(0.1)]
    return nn.Sequential(*layers)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> State:
    out = {f"model.{k}": v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    for index, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                out[f"optim.{index}.{key}"] = value.detach().to("cpu", copy=True).reshape(value.shape)
    return out


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, state: State, device: str) -> None:
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = (
                value.clone() if name == "step" else value.to(device, copy=True)
            )
    optimizer.load_state_dict({"state": slots, "param_groups": optimizer.state_dict()["param_groups"]})


class Trainer:
    def __init__(
        self, widths: tuple[int, ...], device: str, *, seed: int, x: np.ndarray, y: np.ndarray
    ) -> None:
        self.device, self.seed = device, seed
        self.model = build(widths, seed).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1]))).permutation(
            len(y)
        )

    def step(self, step: int, batch: int = 32) -> None:
        start = (step * batch) % (len(self.order) - batch)
        rows = torch.from_numpy(self.order[start : start + batch].astype(np.int64))
        x, y = self.x[rows].to(self.device), self.y[rows].to(self.device)
        seed_step(self.seed, step)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(x), y).backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()


def distance(replayed: State, committed: State, start: State, prefix: str) -> float:
    keys = sorted(
        k
        for k in committed
        if k.startswith(prefix) and committed[k].is_floating_point() and not k.endswith(".step")
    )
    if not keys:
        return 0.0

    def flat(s: State) -> torch.Tensor:
        return torch.cat(
            [
                s[k].reshape(-1).to(torch.float64)
                if k in s
                else torch.zeros(committed[k].numel(), dtype=torch.float64)
                for k in keys
            ]
        )

    r, c, o = flat(replayed), flat(committed), flat(start)
    value = float(torch.linalg.vector_norm(r - c)) / max(float(torch.linalg.vector_norm(c - o)), 1e-30)
    return value if math.isfinite(value) else math.inf


def calibrate(
    name: str, widths: tuple[int, ...], node: str, verifiers: list[str], *, segments: int, every: int
) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4096, widths[0])).astype(np.float32)
    y = (x[:, :4].argmax(axis=1) + (x[:, 4] > 0)).astype(np.int64) % widths[-1]
    seed = 1234
    started = time.perf_counter()
    trainer = Trainer(widths, node, seed=seed, x=x, y=y)
    checkpoints = [snapshot(trainer.model, trainer.optimizer)]
    for segment in range(segments):
        for step in range(segment * every, (segment + 1) * every):
            trainer.step(step)
        checkpoints.append(snapshot(trainer.model, trainer.optimizer))
    train_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "node": node,
        "segments": segments,
        "every": every,
        "train_s": round(train_s, 3),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }
    for verifier in verifiers:
        replayer = Trainer(widths, verifier, seed=seed, x=x, y=y)
        model_d, optim_d, exact = [], [], 0
        for segment in range(segments):
            restore(replayer.model, replayer.optimizer, checkpoints[segment], verifier)
            for step in range(segment * every, (segment + 1) * every):
                replayer.step(step)
            replayed = snapshot(replayer.model, replayer.optimizer)
            committed = checkpoints[segment + 1]
            model_d.append(distance(replayed, committed, checkpoints[segment], "model."))
            optim_d.append(distance(replayed, committed, checkpoints[segment], "optim."))
            exact += all(torch.equal(replayed[k], committed[k]) for k in committed)
        result[f"{node}->{verifier}"] = {
            "bit_exact_segments": exact,
            "model_max": max(model_d),
            "model_mean": sum(model_d) / len(model_d),
            "optimizer_max": max(optim_d),
            "optimizer_mean": sum(optim_d) / len(optim_d),
        }
    return result


def main(argv: list[str] | None = None, *, say: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_replay", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args(argv)
    make_deterministic()
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": cuda,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "dtype": "float32",
    }
    if cuda:
        major, minor = torch.cuda.get_device_capability(0)
        info.update(device=torch.cuda.get_device_name(0), device_class=f"cuda-sm{major}{minor}")
    runs: dict[str, Any] = {}
    pairs = (("cpu", ["cpu"]), ("cuda", ["cuda", "cpu"])) if cuda else (("cpu", ["cpu"]),)
    for name, widths in MODELS.items():
        runs[name] = {}
        for node, verifiers in pairs:
            try:  # one failing pair must not cost the other measurements (device time is scarce)
                runs[name][node] = calibrate(
                    name, widths, node, verifiers, segments=args.segments, every=args.every
                )
            except Exception as exc:
                runs[name][node] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        say(json.dumps({name: runs[name]}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_replay.json").write_text(
        json.dumps({"info": info, "runs": runs}, indent=1) + "\n", encoding="utf-8"
    )
    say(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
