"""JobLimits: the hard limits one sandboxed job runs under (SPEC E2).

Every backend enforces the same numbers; a limit that a backend cannot enforce on this host is reported
by the run (``SandboxResult.enforcement``) instead of being silently dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cyxwiz.errors import ValidationError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Upper bounds a job may ask for; past these a spec is a typo or an attack on the node.
_MAX_MEMORY = 4096 * GiB
_MAX_CORES = 1024.0
_MAX_WALL = 30 * 24 * 3600.0
_MAX_BYTES = 64 * 1024 * GiB
_MAX_PIDS = 1_000_000

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str, *, field: str = "size") -> int:
    """``"16G"``, ``"512MiB"``, ``"1024"`` → bytes (binary units; the CLI's sizes)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValidationError(
            f"not a size: {text!r}", field=field, rule="E2", hint="use a number with K, M, G or T, e.g. 16G"
        )
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * _UNITS[unit])


@dataclass(frozen=True, kw_only=True, slots=True)
class JobLimits:
    """Hard limits of one job. Defaults are SPEC E2's.

    ``gpu_memory_bytes`` cannot be enforced by the kernel: the sandbox passes it to the job
    (``CYXWIZ_GPU_MEMORY_BYTES``) and the training runtime caps its allocator with it; ``gpus`` is how
    many GPUs the job may see (0 = none, the device nodes are not even visible).
    """

    memory_bytes: int = 16 * GiB
    cpu_cores: float = 4.0
    gpu_memory_bytes: int = 8 * GiB
    gpus: int = 0
    wall_seconds: float = 3600.0
    output_bytes: int = 1 * GiB
    disk_bytes: int = 50 * GiB
    pids: int = 512
    #: stdout+stderr the host drains; past it the job fails with ``output_limit`` (a flood wastes the node).
    log_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        self._check_int("memory_bytes", 16 * MiB, _MAX_MEMORY)
        self._check_float("cpu_cores", 0.01, _MAX_CORES)
        self._check_int("gpu_memory_bytes", 0, _MAX_MEMORY)
        self._check_int("gpus", 0, 64)
        self._check_float("wall_seconds", 0.1, _MAX_WALL)
        self._check_int("output_bytes", 0, _MAX_BYTES)
        self._check_int("disk_bytes", 1 * MiB, _MAX_BYTES)
        self._check_int("pids", 4, _MAX_PIDS)
        self._check_int("log_bytes", 4 * KiB, _MAX_BYTES)

    def _check_int(self, name: str, low: int, high: int) -> None:
        value = getattr(self, name)
        # bool is an int subclass: True must not silently mean "1 byte".
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"must be an integer, got {type(value).__name__}", field=name, rule="E2")
        if not low <= value <= high:
            raise ValidationError(f"must be between {low} and {high}, got {value}", field=name, rule="E2")

    def _check_float(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValidationError(f"must be a finite number, got {value!r}", field=name, rule="E2")
        if not low <= value <= high:
            raise ValidationError(f"must be between {low} and {high}, got {value}", field=name, rule="E2")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> JobLimits:
        """Build from a JSON-ish mapping; unknown keys are refused so a typo never drops a limit."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"unknown limit(s): {', '.join(unknown)}", field="limits", rule="E2")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def within(self, ceiling: JobLimits) -> None:
        """Refuse a job asking for more than a node's ceiling (names the first field over it)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(ceiling, f.name)
            if mine > theirs:
                raise ValidationError(
                    f"asks for {mine}, the policy allows at most {theirs}", field=f.name, rule="E2"
                )
