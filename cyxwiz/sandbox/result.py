"""SandboxResult: how a sandboxed run ended and what it left (SPEC E2: the reason is always stated)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "timeout", "oom", "output_limit", "exit_nonzero", "signal"]

#: Statuses whose /output must not be used: partial output is never trusted (E2).
FAILED: frozenset[str] = frozenset({"timeout", "oom", "output_limit", "exit_nonzero", "signal"})


@dataclass(frozen=True, kw_only=True)
class SandboxResult:
    status: Status
    exit_code: int | None
    output_dir: Path
    messages: list[dict[str, Any]]
    stdout_tail: str
    stderr_tail: str
    wall_seconds: float
    #: Human-readable reason, e.g. "wall time 2.0 s exceeded; process tree killed".
    reason: str = ""
    #: Signal number that ended the job (status "signal", or what the watchdog sent).
    signal: int | None = None
    #: Which limits were hit ("memory", "pids", "wall_time", "output_bytes", "log_bytes", "file_size").
    limits_hit: tuple[str, ...] = ()
    output_bytes: int = 0
    peak_memory_bytes: int | None = None
    backend: str = "bubblewrap"
    #: Protection -> how it was enforced on this run (or "NOT enforced: why").
    enforcement: dict[str, str] = field(default_factory=dict)
    #: Bridge messages refused (with the reason), never trusted.
    bridge_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def output_trusted(self) -> bool:
        """Only a clean exit within every limit yields outputs anyone may use (E2)."""
        return self.status == "ok"

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "limits_hit": list(self.limits_hit),
            "output_dir": str(self.output_dir),
            "output_bytes": self.output_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "wall_seconds": round(self.wall_seconds, 3),
            "backend": self.backend,
            "messages": len(self.messages),
            "bridge_errors": len(self.bridge_errors),
            "enforcement": dict(self.enforcement),
        }
