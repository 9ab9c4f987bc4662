"""The GPU calibration script runs its CPU↔CPU control here (issue 20): bit for bit, distance 0."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu_replay import main


def test_cpu_control_is_bit_exact(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--segments", "3", "--every", "2"], say=lambda _m: None) == 0
    result = json.loads((tmp_path / "gpu_replay.json").read_text())
    assert result["info"]["deterministic"] is True and result["info"]["tf32"] is False
    for run in result["runs"].values():
        control = run["cpu"]["cpu->cpu"]
        assert control["bit_exact_segments"] == 3 and control["model_max"] == 0.0
