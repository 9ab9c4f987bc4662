"""Content rules for a dataset, applied before any escrow exists (SPEC G1, G2, F1, threat DoS).

:func:`check_arrays` takes the arrays a reader produced and refuses, naming field and rule: too many or
too few rows, samples that do not fit the model's input shape, non-numeric or complex features, labels
that are not integers in ``[0, output size)``, NaN or infinity (also after the cast to float32, where a
large float64 overflows). :func:`resolve_threshold` keeps the holdout check meaningful.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cyxwiz.errors import ConfigError, ValidationError

FeatureArray = NDArray[np.float32] | NDArray[np.int64]
LabelArray = NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class DatasetLimits:
    """Bounds on what a user may bring (each also bounds the work a refusal costs the trusted side)."""

    #: Bytes of the file as stored (the presigned upload is bound to at most this).
    max_bytes: int = 64 << 20
    #: Bytes of all arrays of an .npz once decompressed (a small archive may inflate to gigabytes).
    max_unpacked_bytes: int = 512 << 20
    max_rows: int = 1_000_000
    #: Fewer rows leave no meaningful holdout.
    min_rows: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatasetLimits:
        """``CYXWIZ_DATASET_MAX_BYTES``, ``CYXWIZ_DATASET_MAX_ROWS``; defaults otherwise."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for name, var in (("max_bytes", "CYXWIZ_DATASET_MAX_BYTES"), ("max_rows", "CYXWIZ_DATASET_MAX_ROWS")):
            raw = env.get(var)
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ConfigError("not an integer", field=var) from None
                if values[name] < 1:
                    raise ConfigError("must be positive", field=var)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """What the model expects of a sample and how many classes it outputs."""

    input_shape: tuple[int, ...]
    input_dtype: str
    num_classes: int


def check_rows(n: int, limits: DatasetLimits, *, field: str) -> None:
    if n > limits.max_rows:
        raise ValidationError(f"more than {limits.max_rows} rows", field=field, rule="G1")
    if n < limits.min_rows:
        raise ValidationError(f"has {n} rows; at least {limits.min_rows} are needed", field=field, rule="G1")


def check_arrays(
    x: np.ndarray, y: np.ndarray, *, shape: ModelShape, limits: DatasetLimits, field: str = "dataset"
) -> tuple[FeatureArray, LabelArray]:
    """Validated copies of ``x`` (float32, or int64 for an integer-input model) and ``y`` (int64)."""
    if y.ndim != 1:
        raise ValidationError(f"labels must be 1-D, got shape {list(y.shape)}", field=f"{field}.y", rule="G1")
    if x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValidationError(
            f"features have {x.shape[0] if x.ndim else 0} rows but labels {y.shape[0]}",
            field=field,
            rule="G1",
        )
    check_rows(int(y.shape[0]), limits, field=field)
    if (
        x.dtype == np.bool_
        or not np.issubdtype(x.dtype, np.number)
        or np.issubdtype(x.dtype, np.complexfloating)
    ):
        raise ValidationError(
            f"features must be real numbers, got dtype {x.dtype}", field=f"{field}.x", rule="G1"
        )
    per_sample = math.prod(x.shape[1:])
    if per_sample != math.prod(shape.input_shape):
        raise ValidationError(
            f"samples of shape {list(x.shape[1:])} do not fit the model input shape "
            f"{list(shape.input_shape)}",
            field="model.input_shape",
            rule="G2",
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValidationError(f"labels must be integers, got dtype {y.dtype}", field=f"{field}.y", rule="G1")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= shape.num_classes:
        raise ValidationError(
            f"labels range over [{low}, {high}] but the model outputs {shape.num_classes} classes "
            f"(labels must lie in [0, {shape.num_classes}))",
            field="task.num_classes",
            rule="G2",
        )
    if shape.input_dtype == "int64":
        if not np.issubdtype(x.dtype, np.integer):
            raise ValidationError(
                "the model takes integer inputs (input_dtype int64)", field=f"{field}.x", rule="G2"
            )
        features: FeatureArray = np.ascontiguousarray(x.astype(np.int64))
    else:
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
            cast = np.ascontiguousarray(x.astype(np.float32))
        bad = ~np.isfinite(cast)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValidationError(
                f"holds NaN or infinity (first at row {row}, after conversion to float32)",
                field=f"{field}.x",
                rule="G1",
            )
        features = cast
    return features, np.ascontiguousarray(y.astype(np.int64))


def default_threshold(num_classes: int) -> float:
    """The documented default of a classification job: halfway between chance and perfect accuracy
    (0.55 for 10 classes, 0.667 for 3, 0.75 for 2)."""
    chance = 1.0 / num_classes
    return round(chance + (1.0 - chance) / 2, 4)


def resolve_threshold(task: object) -> float:
    """A model job's holdout threshold: missing → :func:`default_threshold`; at or below chance → refused,
    since the holdout check would then pass any model (F1)."""
    if not isinstance(task, Mapping):
        raise ValidationError("a model job needs a task with num_classes", field="task", rule="G1")
    num_classes = task.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValidationError("must be an integer of at least 2", field="task.num_classes", rule="G1")
    threshold = task.get("threshold")
    if threshold is None:
        return default_threshold(num_classes)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise ValidationError("must be a number", field="task.threshold", rule="F1")
    chance = 1.0 / num_classes
    if not chance < float(threshold) <= 1.0:
        raise ValidationError(
            f"must be above chance ({chance:.4g} for {num_classes} classes) and at most 1: a threshold at or "
            "below chance makes the holdout check pass any model",
            field="task.threshold",
            rule="F1",
            hint=f"omit it for the default {default_threshold(num_classes)}",
        )
    return float(threshold)
