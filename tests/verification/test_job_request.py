"""The submission rules issue 20 adds to ``tasks.control.parse_job_request`` (what ``POST /v1/jobs`` and the
lifecycle apply; SPEC F1): the verification section passes through, a submitted per-job secret is refused,
and what this control plane does not do yet (redundant mode, a dispute window) is refused by name."""

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
        ({"verification": {"mode": "redundant"}}, "verification.mode"),
        ({"verification": {"dispute_window_s": 3600}}, "verification.dispute_window_s"),
        ({"verification": {"confidence": 1.5}}, "verification.confidence"),
        ({"verification": {"surprise": 1}}, "verification.surprise"),
    ],
)
def test_refused_verification_requests(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_job_request(job(**change))
    assert caught.value.field == field


def test_a_submitted_job_secret_is_refused() -> None:
    spec = job()
    spec["training"] = {**spec["training"], "job_secret": "ab" * 32}
    with pytest.raises(ValidationError) as caught:
        parse_job_request(spec)
    assert (caught.value.field, caught.value.rule) == ("training.job_secret", "F1")
