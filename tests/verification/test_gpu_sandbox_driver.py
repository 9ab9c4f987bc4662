"""The GPU-path driver's CPU path (issue 20; SPEC E1, E2, F1): a tiny job trains inside the bubblewrap
sandbox with the device :mod:`cyxwiz.training.device` picks, and the verifier's replay reproduces every
committed segment on the CPU bit for bit. On a machine with CUDA the same driver adds the CUDA pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu_sandbox import run
from cyxwiz.sandbox.bubblewrap import BubblewrapBackend


@pytest.fixture(scope="module")
def bwrap_usable() -> None:
    ok, why = BubblewrapBackend().probe()
    if not ok:
        pytest.skip(f"bubblewrap cannot run here: {why}")


@pytest.mark.usefixtures("bwrap_usable")
def test_cpu_job_in_the_sandbox_replays_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the CPU path, whatever the host has
    lines: list[str] = []
    doc = run(tmp_path, rows=200, epochs=1, every=3, say=lines.append)

    assert json.loads((tmp_path / "gpu_sandbox.json").read_text()) == json.loads(json.dumps(doc))
    assert not doc["info"]["cuda"] and "only the CPU" in doc["info"]["note"]
    assert list(doc["nodes"]) == ["cpu"]
    node = doc["nodes"]["cpu"]
    # Really sandboxed, with every limit enforced (no in-process fallback, no degraded cgroup).
    assert node["sandboxed"] is True and node["allow_degraded"] is False, node
    assert node["status"] == "ok" and node["runtime"]["device_class"] == "cpu"
    pair = node["cpu->cpu"]
    assert pair["segments"] >= 2
    assert pair["bit_exact_segments"] == pair["segments"]
    assert pair["model_max"] == pair["optimizer_max"] == 0.0
    assert pair["structural_mismatches"] == []
    assert pair["tolerance"].startswith("exact")
    assert any("replaying on cpu" in line for line in lines)


def test_without_a_sandbox_the_driver_says_so_and_still_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lent GPU whose host refuses namespaces still yields figures, never passed off as sandboxed."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(BubblewrapBackend, "probe", lambda self: (False, "no user namespaces (test)"))
    doc = run(tmp_path, rows=200, epochs=1, every=3, say=lambda line: None)

    node = doc["nodes"]["cpu"]
    assert node["sandboxed"] is False and "status" not in node
    assert "no user namespaces (test)" in node["unavailable"]
    assert "no user namespaces (test)" in node["unavailable_degraded"]
    pair = node["cpu->cpu"]
    assert pair["segments"] >= 2 and pair["bit_exact_segments"] == pair["segments"]
