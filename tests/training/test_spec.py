"""Job type and model definition validation (SPEC G1, G2): each bad input refused naming its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cyxwiz.errors import ValidationError
from cyxwiz.training.spec import (
    ModelLimits,
    TrainingJob,
    check_job_type,
    parse_model_definition,
    parse_training_job,
)


def refused(data: Any, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_model_definition(data, **kwargs)
    return info.value


def test_reference_mlp_is_valid_with_its_parameter_count(mlp: dict[str, Any]) -> None:
    summary = parse_model_definition(mlp).summary()
    assert summary.parameter_count == 64 * 64 + 64 + 64 * 10 + 10
    assert summary.output_shape == (10,)
    assert summary.order == ("fc1", "act1", "drop", "fc2")


def test_json_text_is_accepted(mlp: dict[str, Any]) -> None:
    assert parse_model_definition(json.dumps(mlp)).layers[0].name == "fc1"


@pytest.mark.parametrize("bad", ["rce", "", None, 1, "Model", "shell"])
def test_unknown_job_type_is_refused_g1(bad: object, doc: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        check_job_type(bad)
    assert info.value.field == "job_type" and info.value.rule == "G1"
    doc["job_type"] = bad
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == "job_type"


def test_layers_are_required_g2() -> None:
    err = refused({"input_shape": [64]})
    assert err.field == "layers" and err.rule == "G2"
    assert refused({"input_shape": [64], "layers": []}).field == "layers"


def test_layer_type_outside_the_allow_list(mlp: dict[str, Any]) -> None:
    mlp["layers"][1]["type"] = "PythonEval"
    err = refused(mlp)
    assert err.field == "layers[1].type"
    assert "PythonEval" in err.message and "Linear" in err.message


def test_missing_layer_type(mlp: dict[str, Any]) -> None:
    del mlp["layers"][2]["type"]
    assert refused(mlp).field == "layers[2].type"


def test_unknown_field_is_refused(mlp: dict[str, Any]) -> None:
    mlp["layers"][0]["init"] = "__import__('os')"
    assert refused(mlp).field == "layers[0].init"


@pytest.mark.parametrize(
    ("index", "key", "value"),
    [
        (2, "p", 1.0),
        (2, "p", -0.1),
        (0, "out_features", 0),
        (0, "out_features", 10**9),
        (0, "in_features", 0),
    ],
)
def test_out_of_range_parameters(mlp: dict[str, Any], index: int, key: str, value: object) -> None:
    mlp["layers"][index][key] = value
    err = refused(mlp)
    assert err.field == f"layers[{index}].{key}"
    assert err.rule == "G2"


def test_cycle_is_refused_with_the_cycle_named(mlp: dict[str, Any]) -> None:
    mlp["layers"][0]["inputs"] = ["drop"]
    err = refused(mlp)
    assert err.field == "layers[0].inputs"
    assert "fc1 -> act1 -> drop -> fc1" in err.message


def test_self_loop_is_a_cycle(mlp: dict[str, Any]) -> None:
    mlp["layers"][1]["inputs"] = ["act1"]
    assert "circular" in refused(mlp).message


def test_dangling_input(mlp: dict[str, Any]) -> None:
    mlp["layers"][3]["inputs"] = ["fc9"]
    err = refused(mlp)
    assert err.field == "layers[3].inputs[0]" and "dangling" in err.message


def test_duplicate_and_reserved_names(mlp: dict[str, Any]) -> None:
    mlp["layers"][1]["name"] = "fc1"
    assert refused(mlp).field == "layers[1].name"
    mlp["layers"][1]["name"] = "input"
    assert refused(mlp).field == "layers[1].name"


def test_bad_layer_name(mlp: dict[str, Any]) -> None:
    mlp["layers"][1]["name"] = "a b; rm -rf /"
    assert refused(mlp).field == "layers[1].name"


def test_shape_mismatch_is_named(mlp: dict[str, Any]) -> None:
    mlp["layers"][3]["in_features"] = 32
    err = refused(mlp)
    assert err.field == "layers[3].in_features" and "64" in err.message


def test_conv_on_a_flat_input(mlp: dict[str, Any]) -> None:
    mlp["layers"][0] = {"name": "fc1", "type": "Conv2d", "out_channels": 8, "kernel_size": 3}
    assert refused(mlp).field == "layers[0].inputs"


def test_kernel_larger_than_input() -> None:
    model = {
        "input_shape": [1, 8, 8],
        "layers": [
            {"name": "c", "type": "Conv2d", "out_channels": 4, "kernel_size": 9},
            {"name": "f", "type": "Flatten"},
        ],
    }
    assert refused(model).field == "layers[0].kernel_size"


def test_small_cnn_with_residual_add_is_valid() -> None:
    model = {
        "input_shape": [1, 8, 8],
        "layers": [
            {"name": "c1", "type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
            {"name": "bn", "type": "BatchNorm"},
            {"name": "r1", "type": "ReLU"},
            {"name": "c2", "type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
            {"name": "res", "type": "Add", "inputs": ["c2", "r1"]},
            {"name": "pool", "type": "MaxPool2d", "kernel_size": 2},
            {"name": "flat", "type": "Flatten"},
            {"name": "ln", "type": "LayerNorm"},
            {"name": "out", "type": "Linear", "out_features": 10},
        ],
    }
    summary = parse_model_definition(model).summary()
    assert summary.shapes["pool"] == (8, 4, 4)
    assert summary.output_shape == (10,)


def test_add_with_mismatched_shapes(mlp: dict[str, Any]) -> None:
    mlp["layers"].append({"name": "res", "type": "Add", "inputs": ["fc2", "act1"]})
    err = refused(mlp)
    assert err.field == "layers[4].inputs[1]"


def test_add_needs_two_inputs(mlp: dict[str, Any]) -> None:
    mlp["layers"].append({"name": "res", "type": "Add"})
    assert refused(mlp).field == "layers[4].inputs"


def test_unused_layer_is_refused(mlp: dict[str, Any]) -> None:
    mlp["layers"].append({"name": "side", "type": "Tanh", "inputs": ["fc1"]})
    mlp["output"] = "fc2"
    assert refused(mlp).field == "layers[4].name"


def test_parameter_budget_from_the_job_limits(mlp: dict[str, Any]) -> None:
    err = refused(mlp, limits=ModelLimits(max_parameters=1000))
    assert err.field == "layers[0]" and "1000" in err.message
    # A 64 MiB job cannot hold a 20 M parameter model with Adam state.
    mlp["layers"][0]["out_features"] = 65536
    assert refused(mlp, limits=ModelLimits.for_memory(64 << 20)).field == "layers[0]"


def test_too_many_layers(mlp: dict[str, Any]) -> None:
    assert refused(mlp, limits=ModelLimits(max_layers=3)).field == "layers"


def test_activation_blowup_is_refused() -> None:
    model = {
        "input_shape": [4096, 64, 64],
        "layers": [{"name": "c", "type": "Conv2d", "out_channels": 4096, "kernel_size": 1, "padding": 7}],
    }
    assert refused(model).field == "layers[0]"


def test_embedding_reads_only_integer_input() -> None:
    model = {
        "input_shape": [16],
        "input_dtype": "int64",
        "layers": [
            {"name": "emb", "type": "Embedding", "num_embeddings": 100, "embedding_dim": 8},
            {"name": "flat", "type": "Flatten"},
            {"name": "out", "type": "Linear", "out_features": 2},
        ],
    }
    assert parse_model_definition(model).summary().parameter_count == 800 + 128 * 2 + 2
    model["input_dtype"] = "float32"
    assert refused(model).field == "layers[0].inputs"


def test_training_job_prefixes_model_fields(doc: dict[str, Any]) -> None:
    doc["model"]["layers"][0]["inputs"] = ["nowhere"]
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == "model.layers[0].inputs[0]"


def test_output_must_match_the_class_count(doc: dict[str, Any]) -> None:
    doc["task"]["num_classes"] = 3
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == "model.output"


def test_job_type_and_payload_must_agree(doc: dict[str, Any]) -> None:
    doc["job_type"] = "script"
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == "script"
    doc["script"] = {"entry": "train.py", "sha256": "cd" * 32}
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == "model"
    del doc["model"]
    assert parse_training_job(doc).job_type == "script"


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/data.npz",
        "s3://",
        "s3://UPPER/key",
        "ipfs://notacid",
        "file:///etc/passwd",
        "ftp://x/y",
        "s3://bucket/\x00",
    ],
)
def test_dataset_uri_rules_g1(doc: dict[str, Any], uri: str) -> None:
    doc["dataset"]["uri"] = uri
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == "dataset.uri" and info.value.rule == "G1"


def test_dataset_needs_a_content_hash(doc: dict[str, Any]) -> None:
    doc["dataset"]["sha256"] = "nothex"
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == "dataset.sha256"


def test_file_uris_only_in_development(doc: dict[str, Any]) -> None:
    doc["dataset"]["uri"] = "file:///tmp/train.npz"
    assert parse_training_job(doc, allow_file_uris=True).dataset.uri.startswith("file://")
    doc["dataset"]["uri"] = "file:///tmp/../etc/passwd"
    with pytest.raises(ValidationError):
        parse_training_job(doc, allow_file_uris=True)


def test_ipfs_cids(doc: dict[str, Any]) -> None:
    doc["dataset"]["uri"] = "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/train.npz"
    assert parse_training_job(doc).dataset.uri.startswith("ipfs://")


@pytest.mark.parametrize(
    ("key", "value"),
    [("learning_rate", 0), ("learning_rate", 100), ("batch_size", 0), ("epochs", 0), ("momentum", 1)],
)
def test_hyperparameter_ranges(doc: dict[str, Any], key: str, value: object) -> None:
    doc["training"]["hyperparameters"][key] = value
    with pytest.raises(ValidationError) as info:
        parse_training_job(doc)
    assert info.value.field == f"training.hyperparameters.{key}"


def test_spec_hash_is_canonical(doc: dict[str, Any]) -> None:
    first = parse_training_job(doc)
    again = TrainingJob.model_validate_json(first.model_dump_json())
    assert first.sha256() == again.sha256()
    doc["training"]["seed"] = 8
    assert parse_training_job(doc).sha256() != first.sha256()
