"""The job spec's dataset, threshold and payment rules (SPEC G1, F1, F3), as ``POST /v1/jobs`` and the
lifecycle apply them through :func:`tasks.control.parse_job_request`: syntax, nothing read or created."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cyxwiz.datasets import default_threshold, parse_dataset
from cyxwiz.errors import PaymentTooLowError, ValidationError
from infra.demo import REFERENCE_JOB
from tasks.control import parse_job_request

J1 = "job-00000000000000000001"  # canonical job ids (cyxwiz.ids.JOB_ID)

SHA = "ab" * 32


def job(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(REFERENCE_JOB)
    spec.update(changes)
    return spec


def refused(spec: dict[str, Any], field: str, rule: str, error: type[Exception] = ValidationError) -> None:
    with pytest.raises(error) as caught:
        parse_job_request(spec, minimum_payment=1000)
    assert (caught.value.field, caught.value.rule) == (field, rule), caught.value  # type: ignore[attr-defined]


def test_positive_controls() -> None:
    assert parse_job_request(job(), minimum_payment=1000).dataset == "sklearn:digits"
    ref = {"uri": "s3://team-data/wine.csv", "sha256": SHA, "label_column": "target"}
    request = parse_job_request(job(dataset=ref), minimum_payment=1000)
    assert request.dataset == {**ref, "format": "csv", "holdout_fraction": 0.2}
    assert parse_dataset(request.dataset).holdout_source == "secret-split"
    held = {**ref, "holdout": {"uri": "s3://team-data/held.npz", "sha256": "cd" * 32}}
    assert parse_dataset(held).holdout_source == "user-holdout"
    assert parse_dataset("sklearn:digits").holdout_source == "public-derived"
    dev = parse_dataset({"uri": "file:///srv/data/d.npz", "sha256": SHA})
    assert dev.data is not None and dev.data.location.path == "/srv/data/d.npz"


@pytest.mark.parametrize(
    ("dataset", "field", "rule"),
    [
        ("sklearn:mnist", "dataset", "G1"),
        ({"uri": "s3://team-data/d.npz"}, "dataset.sha256", "D3"),
        ({"uri": "s3://team-data/d.npz", "sha256": "AB" * 32}, "dataset.sha256", "D3"),
        ({"uri": "http://example.com/d.npz", "sha256": SHA}, "dataset.uri", "G1"),
        (
            {"uri": "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "sha256": SHA},
            "dataset.uri",
            "G1",
        ),
        ({"uri": "file://relative/d.npz", "sha256": SHA}, "dataset.uri", "G1"),
        ({"uri": "file:///srv/../etc/passwd.npz", "sha256": SHA}, "dataset.uri", "G1"),
        ({"uri": "file:///srv/%2e%2e/etc/x.npz", "sha256": SHA}, "dataset.uri", "G1"),
        ({"uri": "s3://B/d.npz", "sha256": SHA}, "dataset.uri", "G1"),
        ({"uri": "s3://team-data/a/../d.npz", "sha256": SHA}, "dataset.uri", "G1"),
        ({"uri": "s3://team-data/d.npz\n", "sha256": SHA}, "dataset.uri", "G1"),
        ({"uri": "s3://team-data/d.bin", "sha256": SHA}, "dataset.format", "G1"),
        ({"uri": "s3://team-data/d.csv", "sha256": SHA}, "dataset.label_column", "G1"),
        ({"uri": "s3://team-data/d.npz", "sha256": SHA, "label_column": "y"}, "dataset.label_column", "G1"),
        ({"uri": "s3://team-data/d.npz", "sha256": SHA, "format": "parquet"}, "dataset.format", "G1"),
        ({"uri": "s3://team-data/d.npz", "sha256": SHA, "extra": 1}, "dataset", "G1"),
        (
            {"uri": "s3://team-data/d.npz", "sha256": SHA, "holdout_fraction": 0.9},
            "dataset.holdout_fraction",
            "F1",
        ),
        (
            {
                "uri": "s3://team-data/d.npz",
                "sha256": SHA,
                "holdout": {"uri": "s3://team-data/h.npz", "sha256": SHA},
            },
            "dataset.holdout.sha256",
            "F1",
        ),
        (["s3://team-data/d.npz"], "dataset", "G1"),
    ],
)
def test_dataset_refusals(dataset: Any, field: str, rule: str) -> None:
    refused(job(dataset=dataset), field, rule)


@pytest.mark.parametrize("threshold", [0, 0.0, 0.1, 1.5, float("nan"), "0.9", True])
def test_a_threshold_that_makes_the_holdout_check_a_no_op_is_refused(threshold: Any) -> None:
    """F1: 0, anything at or below chance (0.1 for 10 classes), or not a number."""
    refused(job(task={"num_classes": 10, "threshold": threshold}), "task.threshold", "F1")


def test_a_missing_threshold_takes_the_documented_default() -> None:
    request = parse_job_request(job(task={"num_classes": 10}), minimum_payment=1000)
    assert request.training_doc["task"]["threshold"] == default_threshold(10) == 0.55
    assert default_threshold(2) == 0.75


def test_minimum_payment_is_enforced_at_validation() -> None:
    """F3: below the ledger's minimum is refused before any row or escrow (HTTP 422 at POST /v1/jobs)."""
    refused(job(payment=999), "payment", "F3", PaymentTooLowError)
    assert PaymentTooLowError.http_status == 422
    assert parse_job_request(job(payment=1000), minimum_payment=1000).payment == 1000


def test_the_shipped_wine_example_passes_the_same_validator(tmp_path: Any) -> None:
    """The second shipped example (scikit-learn's wine as CSV) goes through the user-data path."""
    import hashlib
    from pathlib import Path

    import yaml

    from cyxwiz.datasets import DatasetSources
    from tasks.control import check_dataset

    examples = Path(__file__).resolve().parents[2] / "examples"
    spec = yaml.safe_load((examples / "wine.yaml").read_text())
    data = examples / "wine.csv"
    spec["dataset"].update(uri=f"file://{data}", sha256=hashlib.sha256(data.read_bytes()).hexdigest())
    request = parse_job_request(spec)
    sources = DatasetSources.from_env({"CYXWIZ_DATASET_FILE_ROOTS": str(examples)})
    checked = check_dataset(request, sources)
    assert len(checked.data) == 178 and request.training_doc["task"]["threshold"] == 0.8


def test_the_signed_training_document_applies_the_same_threshold_rule() -> None:
    """F1 everywhere a training document is read (the verify-job CLI, the node, the verifier), not just at
    submission: zero refused, missing filled with the documented default."""
    from cyxwiz.training.spec import parse_training_job

    doc = parse_job_request(job(), job_id=J1, minimum_payment=1).training_doc
    for threshold in (0, 0.1):
        with pytest.raises(ValidationError) as caught:
            parse_training_job({**doc, "task": {"num_classes": 10, "threshold": threshold}})
        assert (caught.value.field, caught.value.rule) == ("task.threshold", "F1")
    assert parse_training_job({**doc, "task": {"num_classes": 10}}).task.threshold == 0.55
