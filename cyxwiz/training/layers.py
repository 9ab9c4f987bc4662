"""Allow-listed layer types of a model definition (SPEC G2).

Each layer is a small frozen pydantic model with per-field ranges; the ``type`` field selects the class
(a discriminated union), so a layer type outside this list is refused before anything else is looked at.
Shapes are per sample (no batch dimension); the graph checks in :mod:`cyxwiz.training.graph` infer them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Layer names are identifiers, so they can be used as keys and in messages without escaping.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
#: The reserved name a layer lists in ``inputs`` to read the model input.
INPUT_NAME = "input"
#: Widths, channels and embedding sizes above this are refused outright (the parameter budget is separate).
MAX_WIDTH = 65_536


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    #: Names of the layers (or ``"input"``) this layer reads; ``None`` means the previous layer.
    inputs: tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...] | None = Field(
        default=None, min_length=1, max_length=16
    )


class Linear(_Layer):
    type: Literal["Linear"]
    out_features: int = Field(ge=1, le=MAX_WIDTH)
    #: Inferred from the input shape; when given it must match.
    in_features: int | None = Field(default=None, ge=1, le=MAX_WIDTH)
    bias: bool = True


class Conv2d(_Layer):
    type: Literal["Conv2d"]
    out_channels: int = Field(ge=1, le=4096)
    in_channels: int | None = Field(default=None, ge=1, le=4096)
    kernel_size: int = Field(ge=1, le=15)
    stride: int = Field(default=1, ge=1, le=8)
    padding: int = Field(default=0, ge=0, le=7)
    bias: bool = True


class MaxPool2d(_Layer):
    type: Literal["MaxPool2d"]
    kernel_size: int = Field(ge=1, le=15)
    stride: int | None = Field(default=None, ge=1, le=15)
    padding: int = Field(default=0, ge=0, le=7)


class AvgPool2d(_Layer):
    type: Literal["AvgPool2d"]
    kernel_size: int = Field(ge=1, le=15)
    stride: int | None = Field(default=None, ge=1, le=15)
    padding: int = Field(default=0, ge=0, le=7)


class BatchNorm(_Layer):
    """BatchNorm1d for ``(C,)``/``(C, L)`` inputs, BatchNorm2d for ``(C, H, W)``; chosen from the shape."""

    type: Literal["BatchNorm"]
    eps: float = Field(default=1e-5, gt=0, le=1)
    momentum: float = Field(default=0.1, gt=0, le=1)


class LayerNorm(_Layer):
    """Normalises over the last dimension."""

    type: Literal["LayerNorm"]
    eps: float = Field(default=1e-5, gt=0, le=1)


class Dropout(_Layer):
    type: Literal["Dropout"]
    p: float = Field(default=0.5, ge=0, lt=1)


class ReLU(_Layer):
    type: Literal["ReLU"]


class GELU(_Layer):
    type: Literal["GELU"]


class Tanh(_Layer):
    type: Literal["Tanh"]


class Sigmoid(_Layer):
    type: Literal["Sigmoid"]


class Flatten(_Layer):
    """Flattens every per-sample dimension into one."""

    type: Literal["Flatten"]


class Softmax(_Layer):
    type: Literal["Softmax"]
    dim: int = Field(default=-1, ge=-4, le=3)


class LogSoftmax(_Layer):
    type: Literal["LogSoftmax"]
    dim: int = Field(default=-1, ge=-4, le=3)


class Embedding(_Layer):
    """Reads integer token ids (the model input with ``input_dtype: int64``)."""

    type: Literal["Embedding"]
    num_embeddings: int = Field(ge=1, le=1_000_000)
    embedding_dim: int = Field(ge=1, le=MAX_WIDTH)


class Add(_Layer):
    """Residual sum of two or more inputs of the same shape."""

    type: Literal["Add"]


Layer = Annotated[
    Linear
    | Conv2d
    | MaxPool2d
    | AvgPool2d
    | BatchNorm
    | LayerNorm
    | Dropout
    | ReLU
    | GELU
    | Tanh
    | Sigmoid
    | Flatten
    | Softmax
    | LogSoftmax
    | Embedding
    | Add,
    Field(discriminator="type"),
]

#: The allow-list, in the order the docs show it.
LAYER_TYPES: tuple[str, ...] = (
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "BatchNorm",
    "LayerNorm",
    "Dropout",
    "ReLU",
    "GELU",
    "Tanh",
    "Sigmoid",
    "Flatten",
    "Softmax",
    "LogSoftmax",
    "Embedding",
    "Add",
)
#: Layers that take no parameters and keep the shape.
ELEMENTWISE: frozenset[str] = frozenset(
    {"Dropout", "ReLU", "GELU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax"}
)
