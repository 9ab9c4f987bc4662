"""The cheating-node simulator's world: a dev PKI with one node, a tiny dataset and job, and honest
training segment by segment (with a hook a strategy uses to cheat). See :mod:`bench.cheating_node`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cyxwiz.training import engine
from cyxwiz.training.data import Dataset, load_dataset
from cyxwiz.training.runtime import checkpoint_steps, segment_length
from cyxwiz.training.spec import TrainingJob, parse_training_job
from cyxwiz.verification.binding import new_job_secret

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

    @property
    def trainer(self) -> str:
        """node-1's PeerID: every honest run is trained for it (the run seed mixes it in, issue 17)."""
        from cyxwiz.pki.certs import load_certificate
        from cyxwiz.pki.peerid import peer_id

        return peer_id(load_certificate(self.pki.node_cert("node-1")))

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
    #: The PeerID the run was trained for.
    trainer: str
    steps: list[int]
    checkpoints: list[Tensors]
    data: Dataset

    @property
    def segments(self) -> int:
        return len(self.steps) - 1


def train(job: TrainingJob, data: Dataset, *, trainer: str,
          hook: Callable[[engine.TrainingState, int, int, int], None] | None = None,
          start: tuple[int, Tensors] | None = None) -> Run:  # fmt: skip
    """Train ``job`` for the node whose PeerID is ``trainer``, segment by segment; ``hook(state, index, a,
    b)`` replaces the honest steps of a segment; ``start`` resumes from a committed checkpoint index with
    its tensors."""
    state = engine.new_state(job, data, trainer=trainer)
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
    return Run(job=job, trainer=trainer, steps=steps, checkpoints=checkpoints, data=data)


def honest(state: engine.TrainingState, index: int, a: int, b: int) -> None:
    del index
    for step in range(a, b):
        engine.train_step(state, step)
