"""Fuzzing the model definition parser (SPEC G2): any input is either accepted (and then consistent) or
refused with cyxwiz's ValidationError naming a field — never another exception, never a crash."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyxwiz.errors import ValidationError
from cyxwiz.training.layers import LAYER_TYPES
from cyxwiz.training.spec import ModelLimits, parse_model_definition
from tests.training.conftest import REFERENCE_MLP

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_names = st.sampled_from(["input", "fc1", "act1", "drop", "fc2", "x", "y", "fc1 ", ""])
_layer = st.fixed_dictionaries(
    {"name": _names, "type": st.sampled_from([*LAYER_TYPES, "Eval", "linear"])},
    optional={
        "inputs": st.lists(_names, max_size=3),
        "out_features": st.integers(-2, 200),
        "p": st.floats(-1, 2),
        "kernel_size": st.integers(-1, 20),
        "out_channels": st.integers(0, 10),
        "padding": st.integers(-1, 9),
        "num_embeddings": st.integers(0, 50),
        "embedding_dim": st.integers(0, 50),
        "dim": st.integers(-5, 5),
    },
)
_model = st.fixed_dictionaries(
    {
        "input_shape": st.lists(st.integers(-1, 20), max_size=5),
        "layers": st.lists(_layer, max_size=6),
    },
    optional={"output": _names, "input_dtype": st.sampled_from(["float32", "int64", "float64"])},
)


def _accept_or_refuse(data: Any) -> None:
    try:
        model = parse_model_definition(data, limits=ModelLimits(max_parameters=100_000))
    except ValidationError as exc:
        assert exc.rule == "G2"
        assert exc.field is None or exc.field.startswith(("layers", "input_shape", "input_dtype", "output"))
        return
    summary = model.summary(ModelLimits(max_parameters=100_000))
    assert summary.parameter_count <= 100_000
    assert set(summary.order) == {layer.name for layer in model.layers}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_arbitrary_json_never_crashes(data: Any) -> None:
    _accept_or_refuse(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_model)
def test_layer_soup_is_accepted_or_refused_with_a_field(data: Any) -> None:
    _accept_or_refuse(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.sampled_from(["inputs", "name", "type", "out_features", "p"]), _json)
def test_mutating_one_field_of_a_valid_model(index: int, key: str, value: Any) -> None:
    data = copy.deepcopy(REFERENCE_MLP)
    data["layers"][index][key] = value
    _accept_or_refuse(data)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=5), st.integers(1, 64))
def test_generated_mlps_have_the_exact_parameter_count(widths: list[int], features: int) -> None:
    layers: list[dict[str, Any]] = []
    expected = 0
    previous = features
    for i, width in enumerate(widths):
        layers.append({"name": f"fc{i}", "type": "Linear", "out_features": width})
        layers.append({"name": f"act{i}", "type": "GELU"})
        expected += previous * width + width
        previous = width
    summary = parse_model_definition({"input_shape": [features], "layers": layers}).summary()
    assert summary.parameter_count == expected
    assert summary.output_shape == (widths[-1],)
