"""The result of ``verify``: problems named by file and line, warnings, the checkpoint that held."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

MAX_PROBLEMS = 100


class Kind(StrEnum):
    EDITED = "edited"
    REWRITTEN = "rewritten"
    DELETED = "deleted"
    REORDERED = "reordered"
    INSERTED = "inserted"
    MALFORMED = "malformed"
    TORN = "torn"
    TRUNCATED = "truncated"
    CHECKPOINT_INVALID = "checkpoint-invalid"
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"
    CHECKPOINT_MISSING = "checkpoint-missing"
    TREE = "tree-mismatch"
    TAMPER_ALERT = "tamper-alert"
    ANCHOR = "anchor"
    DAY_MISSING = "day-missing"
    DAY_ALTERED = "day-altered"
    DIGEST_MISSING = "digest-missing"
    DIGEST_INVALID = "digest-invalid"
    DIGEST_CHAIN = "digest-chain"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Problem:
    kind: Kind
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.kind.value}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "file": self.file, "line": self.line, "message": self.message}


@dataclass
class VerifyReport:
    path: str
    files: int = 0
    records: int = 0
    days: list[date] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The latest checkpoint of the log that verified (size, base64 root, note), if any.
    checkpoint: dict[str, Any] | None = None
    checkpoints_checked: int = 0
    anchors_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: Kind, file: str, line: int | None, message: str) -> None:
        """Record a problem; past :data:`MAX_PROBLEMS` a broken log is broken enough to say so."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, file, line, message))

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "files": self.files,
            "records": self.records,
            "days": [d.isoformat() for d in self.days],
            "problems": [p.to_dict() for p in self.problems],
            "warnings": self.warnings,
            "checkpoint": self.checkpoint,
            "checkpoints_checked": self.checkpoints_checked,
            "anchors_checked": self.anchors_checked,
        }
