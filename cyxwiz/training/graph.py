"""Graph checks of a model definition: names, DAG by named inputs, shapes, parameter budget (SPEC G2).

Every refusal is a :class:`cyxwiz.errors.ValidationError` whose ``field`` is the path of the offending
value inside the model definition (``layers[3].inputs[0]``), so a user can find it without guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from cyxwiz.errors import ValidationError
from cyxwiz.training import layers as L

Shape = tuple[int, ...]


class ModelLimits(BaseModel):
    """What a job may ask for; the coordinator's policy and the job's memory limit set these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_parameters: int = Field(default=20_000_000, ge=1)
    max_layers: int = Field(default=128, ge=1, le=4096)
    #: Per-sample activation size of any one layer; stops padding/width blow-ups before training starts.
    max_activation_elements: int = Field(default=4_000_000, ge=1)

    @classmethod
    def for_memory(cls, memory_bytes: int, *, max_parameters: int = 20_000_000) -> ModelLimits:
        """Limits for a job with ``memory_bytes`` of memory: Adam needs ~4 float32 copies of every weight,
        and half the memory is left for activations and the runtime itself."""
        budget = max(1, memory_bytes // (4 * 4 * 2))
        return cls(max_parameters=min(max_parameters, budget))


@dataclass(frozen=True)
class ModelSummary:
    """What the checks found: evaluation order, every layer's output shape, the parameter count."""

    order: tuple[str, ...]
    inputs: dict[str, tuple[str, ...]]
    shapes: dict[str, Shape]
    parameter_count: int
    output: str
    output_shape: Shape
    parameters_by_layer: dict[str, int] = field(default_factory=dict)


def _refuse(message: str, where: str, *, hint: str | None = None) -> ValidationError:
    return ValidationError(message, field=where, rule="G2", hint=hint)


def _resolve_inputs(layers: Sequence[L.Layer]) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    index: dict[str, int] = {}
    for i, layer in enumerate(layers):
        if layer.name == L.INPUT_NAME:
            raise _refuse(f"'{L.INPUT_NAME}' is reserved for the model input", f"layers[{i}].name")
        if layer.name in index:
            raise _refuse(
                f"duplicate layer name '{layer.name}' (first at layers[{index[layer.name]}])",
                f"layers[{i}].name",
            )
        index[layer.name] = i
    resolved: dict[str, tuple[str, ...]] = {}
    for i, layer in enumerate(layers):
        names = layer.inputs
        if names is None:
            names = (layers[i - 1].name,) if i else (L.INPUT_NAME,)
        for j, name in enumerate(names):
            if name != L.INPUT_NAME and name not in index:
                raise _refuse(f"input '{name}' names no layer (dangling input)", f"layers[{i}].inputs[{j}]")
        if len(set(names)) != len(names):
            raise _refuse("an input is listed twice", f"layers[{i}].inputs")
        if isinstance(layer, L.Add):
            if len(names) < 2:
                raise _refuse("Add needs at least two inputs", f"layers[{i}].inputs")
        elif len(names) != 1:
            raise _refuse(f"{layer.type} takes exactly one input, got {len(names)}", f"layers[{i}].inputs")
        resolved[layer.name] = tuple(names)
    return index, resolved


def _topological_order(
    layers: Sequence[L.Layer], index: dict[str, int], resolved: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    # Kahn's algorithm, stable in declaration order so shapes are inferred in a predictable order.
    pending = {name: sum(1 for n in ins if n != L.INPUT_NAME) for name, ins in resolved.items()}
    users: dict[str, list[str]] = {name: [] for name in resolved}
    for name, ins in resolved.items():
        for n in ins:
            if n != L.INPUT_NAME:
                users[n].append(name)
    ready = [layer.name for layer in layers if pending[layer.name] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for user in users[name]:
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    if len(order) != len(layers):
        stuck = {name for name, count in pending.items() if count > 0}
        cycle = _find_cycle(stuck, resolved)
        first = min(cycle, key=lambda n: index[n])
        start = cycle.index(first)
        cycle = cycle[start:] + cycle[:start]  # start at the first declared layer: easier to find
        raise _refuse(
            "circular dependency: " + " -> ".join([*cycle, cycle[0]]),
            f"layers[{index[first]}].inputs",
            hint="layers must form a DAG; an input may only name a layer that does not depend on this one",
        )
    return tuple(order)


def _find_cycle(stuck: set[str], resolved: dict[str, tuple[str, ...]]) -> list[str]:
    # Every stuck node has a stuck predecessor, so walking predecessors must revisit a node.
    node = min(stuck)
    seen: list[str] = []
    while node not in seen:
        seen.append(node)
        node = next(n for n in resolved[node] if n in stuck)
    cycle = seen[seen.index(node) :]
    cycle.reverse()  # walked against the edges; show them in data-flow direction
    return cycle


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# One branch per layer type keeps each shape rule next to its parameter count.
def _infer(  # noqa: PLR0911, PLR0912
    layer: L.Layer, i: int, shapes: list[Shape], is_int: bool
) -> tuple[Shape, int]:
    """Output shape and parameter count of one layer given its input shapes."""
    where = f"layers[{i}]"
    shape = shapes[0]
    if isinstance(layer, L.Embedding):
        if not is_int:
            raise _refuse(
                "Embedding reads integer ids: use it on the model input with input_dtype int64",
                f"{where}.inputs",
            )
        return (*shape, layer.embedding_dim), layer.num_embeddings * layer.embedding_dim
    if is_int:
        raise _refuse(f"{layer.type} cannot read integer ids (only Embedding can)", f"{where}.inputs")
    if isinstance(layer, L.Linear):
        if not shape:
            raise _refuse("Linear needs at least one dimension", f"{where}.inputs")
        if layer.in_features is not None and layer.in_features != shape[-1]:
            raise _refuse(
                f"in_features {layer.in_features} does not match the input's last dimension "
                f"{shape[-1]} (input shape {list(shape)})",
                f"{where}.in_features",
            )
        params = shape[-1] * layer.out_features + (layer.out_features if layer.bias else 0)
        return (*shape[:-1], layer.out_features), params
    if isinstance(layer, L.Conv2d | L.MaxPool2d | L.AvgPool2d):
        if len(shape) != 3:
            raise _refuse(
                f"{layer.type} needs a (channels, height, width) input, got {list(shape)}", f"{where}.inputs"
            )
        c, h, w = shape
        stride = layer.stride if layer.stride is not None else layer.kernel_size
        if isinstance(layer, L.MaxPool2d | L.AvgPool2d) and layer.padding * 2 > layer.kernel_size:
            raise _refuse("padding must be at most half the kernel size", f"{where}.padding")
        oh, ow = (_conv_out(s, layer.kernel_size, stride, layer.padding) for s in (h, w))
        if oh < 1 or ow < 1:
            raise _refuse(
                f"kernel_size {layer.kernel_size} is larger than the padded input {h}x{w}",
                f"{where}.kernel_size",
            )
        if isinstance(layer, L.Conv2d):
            if layer.in_channels is not None and layer.in_channels != c:
                raise _refuse(
                    f"in_channels {layer.in_channels} does not match the input's {c} channels",
                    f"{where}.in_channels",
                )
            params = layer.out_channels * c * layer.kernel_size**2 + (layer.out_channels if layer.bias else 0)
            return (layer.out_channels, oh, ow), params
        return (c, oh, ow), 0
    if isinstance(layer, L.BatchNorm):
        if len(shape) not in (1, 2, 3):
            raise _refuse(
                f"BatchNorm needs a (C,), (C, L) or (C, H, W) input, got {list(shape)}", f"{where}.inputs"
            )
        return shape, 2 * shape[0]
    if isinstance(layer, L.LayerNorm):
        if not shape:
            raise _refuse("LayerNorm needs at least one dimension", f"{where}.inputs")
        return shape, 2 * shape[-1]
    if isinstance(layer, L.Softmax | L.LogSoftmax):
        if not -len(shape) <= layer.dim < len(shape):
            raise _refuse(f"dim {layer.dim} is out of range for input shape {list(shape)}", f"{where}.dim")
        return shape, 0
    if isinstance(layer, L.Flatten):
        return (math.prod(shape),), 0
    if isinstance(layer, L.Add):
        for j, other in enumerate(shapes[1:], start=1):
            if other != shape:
                raise _refuse(
                    f"Add inputs differ in shape: {list(shape)} vs {list(other)}", f"{where}.inputs[{j}]"
                )
        return shape, 0
    return shape, 0  # element-wise: ReLU, GELU, Tanh, Sigmoid, Dropout


def analyse(
    layers: Sequence[L.Layer],
    *,
    input_shape: Shape,
    input_dtype: str,
    output: str | None,
    limits: ModelLimits,
) -> ModelSummary:
    """Check the graph of ``layers`` and infer shapes; raise ValidationError naming the field on refusal."""
    if not layers:
        raise _refuse("at least one layer is required", "layers")
    if len(layers) > limits.max_layers:
        raise _refuse(f"{len(layers)} layers exceed the limit of {limits.max_layers}", "layers")
    index, resolved = _resolve_inputs(layers)
    out_name = output if output is not None else layers[-1].name
    if out_name not in index:
        raise _refuse(f"output '{out_name}' names no layer", "output")
    order = _topological_order(layers, index, resolved)
    _check_reaches_output(layers, resolved, out_name)
    shapes: dict[str, Shape] = {L.INPUT_NAME: tuple(input_shape)}
    params: dict[str, int] = {}
    total = 0
    for name in order:
        i = index[name]
        layer = layers[i]
        ins = resolved[name]
        is_int = input_dtype == "int64" and ins == (L.INPUT_NAME,)
        shape, count = _infer(layer, i, [shapes[n] for n in ins], is_int)
        if math.prod(shape) > limits.max_activation_elements:
            raise _refuse(
                f"output shape {list(shape)} has {math.prod(shape)} elements per sample, more than "
                f"the limit of {limits.max_activation_elements}",
                f"layers[{i}]",
            )
        shapes[name] = shape
        params[name] = count
        total += count
        if total > limits.max_parameters:
            raise _refuse(
                f"the model has more than {limits.max_parameters} parameters "
                f"(reached {total} at layer '{name}')",
                f"layers[{i}]",
                hint="use narrower layers or ask for a job with more memory",
            )
    del shapes[L.INPUT_NAME]
    return ModelSummary(
        order=order,
        inputs=resolved,
        shapes=shapes,
        parameter_count=total,
        output=out_name,
        output_shape=shapes[out_name],
        parameters_by_layer=params,
    )


def _check_reaches_output(layers: Sequence[L.Layer], resolved: dict[str, tuple[str, ...]], out: str) -> None:
    # A layer nothing reads would still be trained (and paid for) without affecting the result: refuse it.
    used = {out}
    stack = [out]
    while stack:
        for n in resolved[stack.pop()]:
            if n != L.INPUT_NAME and n not in used:
                used.add(n)
                stack.append(n)
    for i, layer in enumerate(layers):
        if layer.name not in used:
            raise _refuse(
                f"layer '{layer.name}' does not contribute to the output '{out}'", f"layers[{i}].name"
            )
