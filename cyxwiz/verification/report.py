"""Verification report: one pass/fail per check with its reason, as JSON and as Markdown."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from cyxwiz.verification.canonical import canonical_json


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VerificationReport:
    job_id: str
    checks: tuple[Check, ...]
    proof_sha256: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.reason}" for c in self.failures]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "passed": self.passed,
            "proof_sha256": self.proof_sha256,
            "checks": [asdict(c) for c in self.checks],
            "summary": self.summary,
        }

    def to_json(self) -> str:
        return json.dumps(json.loads(canonical_json(_jsonable(self.to_dict()))), indent=2) + "\n"

    def to_markdown(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"# Verification of job `{self.job_id}`: **{verdict}**", ""]
        if self.proof_sha256:
            lines += [f"Proof SHA-256: `{self.proof_sha256}`", ""]
        lines += ["| check | result | reason |", "|---|---|---|"]
        for c in self.checks:
            reason = c.reason.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {reason} |")
        if self.summary:
            lines += ["", "| measure | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in self.summary.items()]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    # Report details may hold floats like nan from a broken model; show them as text, not invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
