"""The reference job: a small MLP on scikit-learn's digits that the demo, the benchmarks and the tests
train and verify. One copy, so a change to the reference model reaches every place that uses it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from cyxwiz.verification.binding import new_job_secret

#: 64 pixels -> 64 hidden (ReLU, dropout 0.1) -> 10 classes.
REFERENCE_MLP: dict[str, Any] = {
    "input_shape": [64],
    "layers": [
        {"name": "fc1", "type": "Linear", "out_features": 64},
        {"name": "act1", "type": "ReLU"},
        {"name": "drop", "type": "Dropout", "p": 0.1},
        {"name": "fc2", "type": "Linear", "out_features": 10},
    ],
}


def reference_model() -> dict[str, Any]:
    """A fresh copy of :data:`REFERENCE_MLP` (callers edit it)."""
    return copy.deepcopy(REFERENCE_MLP)


def reference_job_document(
    *,
    job_id: str,
    train: Path,
    train_sha256: str,
    seed: int = 7,
    job_secret: str | None = None,
    epochs: int = 30,
    learning_rate: float = 0.01,
    threshold: float = 0.9,
    checkpoint_every: int = 4,
) -> dict[str, Any]:
    """The reference MLP job on digits, bound to ``job_secret`` (a fresh one when None)."""
    return {
        "job_id": job_id,
        "job_type": "model",
        "model": reference_model(),
        "dataset": {"uri": f"file://{train.resolve()}", "sha256": train_sha256},
        "training": {
            "seed": seed,
            "job_secret": job_secret or new_job_secret(),
            "checkpoint_every": checkpoint_every,
            "hyperparameters": {"batch_size": 32, "epochs": epochs, "learning_rate": learning_rate},
        },
        "task": {"num_classes": 10, "threshold": threshold, "tolerance": 0.05},
    }
