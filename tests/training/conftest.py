"""Fixtures for the training tests: the reference model definition and a training document."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cyxwiz.verification.reference import REFERENCE_MLP


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
