"""The training runtime in-process: determinism, refusals, outputs (issue 7; SPEC G1, D3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cyxwiz.errors import IntegrityError, ValidationError
from cyxwiz.training.data import DataOrder, prepare_digits
from cyxwiz.training.model import build_model, count_parameters
from cyxwiz.training.runtime import RecordingReporter, checkpoint_steps, main, run_training
from cyxwiz.training.spec import parse_model_definition
from tests.training.conftest import training_doc


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return prepare_digits(tmp_path_factory.mktemp("digits"))


def small_job(tmp: Path, digits: Any, **training: Any) -> Path:
    doc = training_doc(dataset={"uri": f"file://{digits.train}", "sha256": digits.train_sha256})
    doc["training"].update({"hyperparameters": {"batch_size": 64, "epochs": 1, "learning_rate": 0.01}})
    doc["training"].update(training)
    path = tmp / "job.json"
    path.write_text(json.dumps(doc))
    return path


def test_digits_split_is_reproducible(tmp_path: Path, digits: Any) -> None:
    again = prepare_digits(tmp_path)
    assert (again.train_sha256, again.holdout_sha256) == (digits.train_sha256, digits.holdout_sha256)
    with np.load(digits.holdout) as holdout, np.load(digits.train) as train:
        assert len(holdout["y"]) + len(train["y"]) == 1797


def test_two_runs_commit_identical_checkpoints(tmp_path: Path, digits: Any) -> None:
    job = small_job(tmp_path, digits)
    first, second = RecordingReporter(), RecordingReporter()
    run_training(job, data_path=digits.train, output_dir=tmp_path / "a", reporter=first, trainer=None)
    summary = run_training(
        job, data_path=digits.train, output_dir=tmp_path / "b", reporter=second, trainer=None
    )
    commits = [m for m in first.messages if m["kind"] == "checkpoint"]
    assert commits == [m for m in second.messages if m["kind"] == "checkpoint"]
    assert len(commits) == summary.checkpoints == len(checkpoint_steps(summary.steps, 5))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())["final"]
    assert 0 <= metrics["val_accuracy"] <= 1


def test_dataset_with_another_hash_is_refused_d3(tmp_path: Path, digits: Any) -> None:
    job = small_job(tmp_path, digits)
    with pytest.raises(IntegrityError) as info:
        run_training(
            job,
            data_path=digits.holdout,
            output_dir=tmp_path / "out",
            reporter=RecordingReporter(),
            trainer=None,
        )
    assert info.value.rule == "D3"
    assert not (tmp_path / "out").exists()


def test_pickled_dataset_is_refused(tmp_path: Path, digits: Any) -> None:
    evil = tmp_path / "evil.npz"
    np.savez(evil, X=np.array([object()], dtype=object), y=np.array([0]))
    from cyxwiz.hashing import file_sha256

    doc = training_doc(dataset={"uri": f"file://{evil}", "sha256": file_sha256(evil)})
    (tmp_path / "job.json").write_text(json.dumps(doc))
    with pytest.raises(ValidationError):
        run_training(
            tmp_path / "job.json",
            data_path=evil,
            output_dir=tmp_path / "out",
            reporter=RecordingReporter(),
            trainer=None,
        )


def test_script_jobs_are_not_trained_by_the_runtime(tmp_path: Path) -> None:
    doc = training_doc(job_type="script", script={"entry": "train.py", "sha256": "cd" * 32})
    del doc["model"]
    (tmp_path / "job.json").write_text(json.dumps(doc))
    with pytest.raises(ValidationError) as info:
        run_training(
            tmp_path / "job.json",
            data_path=tmp_path / "x.npz",
            output_dir=tmp_path / "o",
            reporter=RecordingReporter(),
            trainer=None,
        )
    assert info.value.field == "job_type"


def test_cli_prints_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job.json").write_text(json.dumps(training_doc(job_type="shell")))
    assert main(["--job", str(tmp_path / "job.json"), "--data", "x", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: job_type")


def test_a_bound_job_trains_for_the_named_node_only(tmp_path: Path, digits: Any) -> None:
    """Issue 17 (F1, A5): with a per-job secret the run belongs to the trainer's PeerID; without one the
    CLI refuses to train (one error line, nothing written), and two nodes train two different runs."""
    from cyxwiz.pki.keys import generate_ed25519
    from cyxwiz.pki.peerid import peer_id

    job = small_job(tmp_path, digits, job_secret="5e" * 32)
    where = ["--job", str(job), "--data", str(digits.train)]
    assert main([*where, "--output", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert not (tmp_path / "none").exists()
    h, c = (peer_id(generate_ed25519()) for _ in range(2))
    for name, peer in (("h", h), ("h2", h), ("c", c)):
        assert main([*where, "--output", str(tmp_path / name), "--device", "cpu", "--trainer", peer]) == 0
    model = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in ("h", "h2", "c")}
    assert model["h"] == model["h2"] != model["c"]  # reproducible for its node, another run for another
    assert main([*where, "--output", str(tmp_path / "bad"), "--trainer", h.lower()]) == 2


def test_data_order_covers_each_epoch_once() -> None:
    order = DataOrder(seed=3, n=100, batch_size=32, epochs=2)
    assert order.total_steps == 8
    first_epoch = np.concatenate([order.batch(s) for s in range(4)])
    assert sorted(first_epoch.tolist()) == list(range(100))
    assert not np.array_equal(order.batch(0), order.batch(4))
    assert order.segment_sha256(0, 4) != DataOrder(seed=4, n=100, batch_size=32, epochs=2).segment_sha256(
        0, 4
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 32), min_size=1, max_size=3), st.booleans())
def test_built_model_matches_the_inferred_shapes_and_count(widths: list[int], conv: bool) -> None:
    layers: list[dict[str, Any]] = []
    if conv:
        layers += [
            {"name": "c", "type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "bn", "type": "BatchNorm"},
            {"name": "p", "type": "MaxPool2d", "kernel_size": 2},
            {"name": "f", "type": "Flatten"},
        ]
    for i, w in enumerate(widths):
        layers += [{"name": f"fc{i}", "type": "Linear", "out_features": w}, {"name": f"a{i}", "type": "Tanh"}]
    definition = parse_model_definition({"input_shape": [1, 8, 8] if conv else [64], "layers": layers})
    summary = definition.summary()
    model = build_model(definition)
    assert count_parameters(model) == summary.parameter_count
    out = model(torch.zeros((2, *definition.input_shape)))
    assert tuple(out.shape[1:]) == summary.output_shape
