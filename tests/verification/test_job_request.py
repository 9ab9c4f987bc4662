"""The submission rules issue 20 adds to ``tasks.control.parse_job_request`` (what ``POST /v1/jobs`` and the
lifecycle apply; SPEC F1): the verification section passes through, a submitted per-job secret is refused,
a dispute window within its bounds is carried to the lifecycle; a redundant job needs the second node's own
signed lock (``replica_funding``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cyxwiz.errors import ValidationError
from infra.demo import REFERENCE_JOB
from tasks.control import parse_job_request


def job(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(REFERENCE_JOB)
    spec.update(changes)
    return spec


def test_verification_section_reaches_the_training_document() -> None:
    request = parse_job_request(job(verification={"target_fraction": 0.05, "budget": 0.2}))
    assert request.training_doc["verification"] == {"target_fraction": 0.05, "budget": 0.2}
    assert "verification" not in parse_job_request(job()).training_doc  # defaults stay implicit
    assert "job_secret" not in request.training_doc["training"]  # set only after assignment


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"verification": {"mode": "redundant"}}, "replica_funding"),
        ({"replica_funding": {"job_id": "job-" + "b" * 20}}, "replica_funding"),
        (
            {"verification": {"mode": "redundant"}, "replica_funding": {"job_id": "job-12"}},
            "replica_funding.job_id",
        ),
        (
            {"verification": {"mode": "redundant"}, "replica_funding": {"job_id": "job-" + "a" * 20}},
            "replica_funding.job_id",
        ),
        ({"verification": {"dispute_window_s": 31 * 86_400}}, "verification.dispute_window_s"),
        ({"verification": {"confidence": 1.5}}, "verification.confidence"),
        ({"verification": {"surprise": 1}}, "verification.surprise"),
    ],
)
def test_refused_verification_requests(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_job_request(job(**change), job_id="job-" + "a" * 20)
    assert caught.value.field == field


def test_a_dispute_window_reaches_the_lifecycle() -> None:
    request = parse_job_request(job(verification={"dispute_window_s": 3600}), job_id="job-" + "a" * 20)
    assert request.dispute_window_s == 3600 and request.replica_job_id is None


def test_a_redundant_job_is_two_shares_of_one_document() -> None:
    """F1 (issue 20): the second share trains the same document under the id its own lock was signed for."""
    from tasks.control import replica_request, replica_spec

    spec = job(verification={"mode": "redundant"}, replica_funding={"job_id": "job-" + "b" * 20})
    request = parse_job_request(spec, job_id="job-" + "a" * 20)
    assert request.replica_job_id == "job-" + "b" * 20
    share = replica_request(request)
    assert (share.job_id, share.replica_job_id, share.payment) == ("job-" + "b" * 20, None, request.payment)
    assert share.training_doc["job_id"] == share.job_id
    assert share.training_doc["dataset"]["uri"].startswith(f"s3://cyxwiz/jobs/{share.job_id}/")
    same = {k: v for k, v in share.training_doc.items() if k not in ("job_id", "dataset")}
    assert same == {k: v for k, v in request.training_doc.items() if k not in ("job_id", "dataset")}
    assert replica_spec(spec)["funding"] == spec["replica_funding"]
    from cyxwiz.training.spec import VerificationSpec
    from tasks.control import _redundancy

    with pytest.raises(ValidationError) as caught:  # a script job has no replayable segments to referee
        _redundancy(
            spec, job_id=request.job_id, job_type="script", verification=VerificationSpec(mode="redundant")
        )
    assert (caught.value.field, caught.value.rule) == ("verification.mode", "F1")


def test_a_submitted_job_secret_is_refused() -> None:
    spec = job()
    spec["training"] = {**spec["training"], "job_secret": "ab" * 32}
    with pytest.raises(ValidationError) as caught:
        parse_job_request(spec)
    assert (caught.value.field, caught.value.rule) == ("training.job_secret", "F1")
