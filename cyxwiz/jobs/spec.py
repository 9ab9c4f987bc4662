"""Read a job file (YAML or JSON) and check its shape before anything leaves the machine (SPEC G1, F3).

Only the cheap, certain refusals happen here — not a mapping, no payment, neither ``job_type`` nor
``model`` — each naming the field and rule. The coordinator's hooks run the full validation (model
layers, hyperparameters, limits) and their problem+json answer is what the user sees for the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cyxwiz.errors import ValidationError

#: The coordinator refuses bodies over 1 MiB (SPEC I); refusing here gives a clearer message.
MAX_SPEC_BYTES = 1 << 20


def load_job_spec(path: Path) -> dict[str, Any]:
    """Parse ``path`` (``.json``, else YAML) and :func:`check_job_spec` it. Nothing is sent anywhere."""
    if not path.is_file():
        raise ValidationError("job file not found", path=str(path), rule="G1")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise ValidationError(
            f"job file is {size} bytes; the limit is {MAX_SPEC_BYTES}", path=str(path), rule="I"
        )
    text = path.read_text(encoding="utf-8", errors="strict")
    data = _parse_json(text, path) if path.suffix.lower() == ".json" else _parse_yaml(text, path)
    return check_job_spec(data, source=str(path))


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path=str(path), rule="G1"
        ) from None


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        # safe_load: a job file is data; YAML tags that build Python objects are refused.
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ValidationError(f"not valid YAML ({where}{problem})", path=str(path), rule="G1") from None


def with_dataset(spec: dict[str, Any], uploaded: dict[str, str]) -> dict[str, Any]:
    """``spec`` naming an uploaded file: its ``{uri, sha256}`` replace the dataset's, the rest (format,
    label column, holdout) stays as the job file says."""
    current = spec.get("dataset")
    base = dict(current) if isinstance(current, dict) else {}
    return {**spec, "dataset": {**base, **uploaded}}


def check_job_spec(spec: object, *, source: str = "spec") -> dict[str, Any]:
    """The light local check; returns the spec as a JSON-ready dict or raises :class:`ValidationError`."""
    if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
        raise ValidationError(
            "a job spec is a mapping with string keys", path=source, field="spec", rule="G1"
        )
    payment = spec.get("payment")
    if payment is None:
        raise ValidationError("is required (base units to escrow)", path=source, field="payment", rule="F3")
    if not isinstance(payment, int) or isinstance(payment, bool) or payment <= 0:
        raise ValidationError(
            "must be a positive integer of base units", path=source, field="payment", rule="F3"
        )
    if "job_type" not in spec and "model" not in spec:
        raise ValidationError("job_type or model is required", path=source, field="job_type", rule="G1")
    if "job_type" in spec and (not isinstance(spec["job_type"], str) or not spec["job_type"]):
        raise ValidationError("must be a non-empty string", path=source, field="job_type", rule="G1")
    for name in ("model", "training", "task", "limits"):
        if name in spec and not isinstance(spec[name], dict):
            raise ValidationError("must be a mapping", path=source, field=name, rule="G1")
    try:
        # YAML can yield dates, sets or non-finite floats; the wire format is strict JSON.
        return dict(json.loads(json.dumps(spec, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"holds a value JSON cannot carry ({exc})", path=source, field="spec", rule="G1"
        ) from None
