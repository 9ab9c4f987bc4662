"""Build a PyTorch module from a validated :class:`~cyxwiz.training.spec.ModelDefinition`.

Only allow-listed layer types map to modules here; the graph was checked (DAG, shapes) before, so
building cannot fail on user input. Imports torch: not for the light ``cyxwiz.training`` import path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cyxwiz.training import layers as L
from cyxwiz.training.determinism import PortableDropout
from cyxwiz.training.graph import ModelSummary, Shape
from cyxwiz.training.spec import ModelDefinition


class _Sum(nn.Module):
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return total


def _batch_dim(dim: int) -> int:
    # Definitions count dimensions per sample; the module sees a leading batch dimension.
    return dim + 1 if dim >= 0 else dim


def _module(layer: L.Layer, shape: Shape) -> nn.Module:  # noqa: PLR0911, PLR0912 (one branch per layer type)
    if isinstance(layer, L.Linear):
        return nn.Linear(shape[-1], layer.out_features, bias=layer.bias)
    if isinstance(layer, L.Conv2d):
        return nn.Conv2d(
            shape[0],
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            bias=layer.bias,
        )
    if isinstance(layer, L.MaxPool2d):
        return nn.MaxPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, L.AvgPool2d):
        return nn.AvgPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, L.BatchNorm):
        if len(shape) == 3:
            return nn.BatchNorm2d(shape[0], eps=layer.eps, momentum=layer.momentum)
        return nn.BatchNorm1d(shape[0], eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, L.LayerNorm):
        return nn.LayerNorm(shape[-1], eps=layer.eps)
    if isinstance(layer, L.Dropout):
        return PortableDropout(layer.p)  # same mask on CPU and CUDA: a GPU run replays on the CPU
    if isinstance(layer, L.Softmax):
        return nn.Softmax(dim=_batch_dim(layer.dim))
    if isinstance(layer, L.LogSoftmax):
        return nn.LogSoftmax(dim=_batch_dim(layer.dim))
    if isinstance(layer, L.Embedding):
        return nn.Embedding(layer.num_embeddings, layer.embedding_dim)
    if isinstance(layer, L.Add):
        return _Sum()
    if isinstance(layer, L.Flatten):
        return nn.Flatten(start_dim=1)
    simple: dict[str, type[nn.Module]] = {
        "ReLU": nn.ReLU,
        "GELU": nn.GELU,
        "Tanh": nn.Tanh,
        "Sigmoid": nn.Sigmoid,
    }
    return simple[layer.type]()


class GraphModel(nn.Module):
    """Runs the layers in topological order; each reads its named inputs."""

    def __init__(self, definition: ModelDefinition, summary: ModelSummary) -> None:
        super().__init__()
        by_name = {layer.name: layer for layer in definition.layers}
        # Prefixed keys: a layer called "keys" or "update" must not clash with ModuleDict's methods.
        self.blocks = nn.ModuleDict()
        for name in summary.order:
            first_input = summary.inputs[name][0]
            in_shape = definition.input_shape if first_input == L.INPUT_NAME else summary.shapes[first_input]
            self.blocks[f"l_{name}"] = _module(by_name[name], tuple(in_shape))
        self.order = summary.order
        self.wiring = summary.inputs
        self.output = summary.output
        self.output_kind = by_name[summary.output].type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {L.INPUT_NAME: x}
        for name in self.order:
            values[name] = self.blocks[f"l_{name}"](*(values[n] for n in self.wiring[name]))
        return values[self.output]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, whether the definition ends in logits, Softmax or LogSoftmax."""
        if self.output_kind == "LogSoftmax":
            return nn.functional.nll_loss(output, target)
        if self.output_kind == "Softmax":
            return nn.functional.nll_loss(torch.log(output.clamp_min(1e-12)), target)
        return nn.functional.cross_entropy(output, target)


def build_model(definition: ModelDefinition, summary: ModelSummary | None = None) -> GraphModel:
    return GraphModel(definition, summary or definition.summary())


def count_parameters(module: nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def state_tensors(module: nn.Module) -> dict[str, Any]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
