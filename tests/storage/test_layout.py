"""Key layout and key validation (SPEC D3, E5, H3)."""

from __future__ import annotations

import datetime as dt

import pytest

from cyxwiz.errors import ValidationError
from cyxwiz.storage import layout

J1 = "job-000000000000000000a1"  # canonical job ids (cyxwiz.ids.JOB_ID)


def test_job_keys() -> None:
    assert layout.job_input(J1, "data/train.npz") == f"jobs/{J1}/inputs/data/train.npz"
    assert layout.job_output(J1, "model.safetensors") == f"jobs/{J1}/outputs/model.safetensors"
    assert layout.job_proof(J1) == f"jobs/{J1}/proof.json"
    assert layout.job_verification(J1) == f"jobs/{J1}/verification.json"
    assert layout.job_manifest(J1) == f"jobs/{J1}/manifest.json"
    assert layout.job_of(f"jobs/{J1}/outputs/x") == J1
    assert layout.job_of("audit/2024-01-01.jsonl.gz") is None


def test_audit_keys() -> None:
    day = dt.date(2024, 5, 1)
    assert layout.audit_day(day) == "audit/2024-05-01.jsonl.gz"
    assert layout.audit_digest("2024-05-01") == "audit/2024-05-01.digest.json"
    assert layout.audit_day(dt.datetime(2024, 5, 1, 23, 59, tzinfo=dt.UTC)) == "audit/2024-05-01.jsonl.gz"
    assert layout.manifest_for("audit/2024-05-01.jsonl.gz") == "audit/manifest.json"
    with pytest.raises(ValidationError) as err:
        layout.audit_day("2024-13-01")
    assert err.value.field == "date"


def test_blob_is_content_addressed() -> None:
    digest = "ab" + "0" * 62
    assert layout.blob(digest) == f"blobs/sha256/ab/{digest}"
    with pytest.raises(ValidationError):
        layout.blob("AB" + "0" * 62)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/etc/passwd",
        "jobs/../etc",
        "jobs/./x",
        "jobs//x",
        "jobs/x/",
        ".meta/x",
        "jobs/.hidden",
        "jobs/a\x00b",
        "jobs/caf\u00e9",
        "jobs/a b",
        "jobs\\x",
        "x" * 1025,
    ],
)
def test_bad_keys_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        layout.validate_key(bad)
    assert err.value.field == "key"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 65, "j\u00e9"])
def test_bad_job_ids_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        layout.job_input(bad, "x")
    assert err.value.field == "job_id"


def test_name_cannot_climb_out_of_the_job() -> None:
    with pytest.raises(ValidationError) as err:
        layout.job_output(J1, "../../j2/outputs/model")
    assert err.value.field == "name"
