"""Fixtures for the training tests: the reference model definition and a training document."""

from __future__ import annotations

import copy
from typing import Any

import pytest

REFERENCE_MLP: dict[str, Any] = {
    "input_shape": [64],
    "layers": [
        {"name": "fc1", "type": "Linear", "out_features": 64},
        {"name": "act1", "type": "ReLU"},
        {"name": "drop", "type": "Dropout", "p": 0.1},
        {"name": "fc2", "type": "Linear", "out_features": 10},
    ],
}


def training_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "job_id": "job-1",
        "job_type": "model",
        "model": copy.deepcopy(REFERENCE_MLP),
        "dataset": {"uri": "s3://cyxwiz-data/digits/train.npz", "sha256": "ab" * 32},
        "training": {"seed": 7, "checkpoint_every": 5, "hyperparameters": {"batch_size": 32}},
        "task": {"num_classes": 10, "threshold": 0.9},
    }
    doc.update(overrides)
    return doc


@pytest.fixture
def mlp() -> dict[str, Any]:
    return copy.deepcopy(REFERENCE_MLP)


@pytest.fixture
def doc() -> dict[str, Any]:
    return training_doc()
