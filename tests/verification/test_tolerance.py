"""Replay tolerances (issue 20): exact within a backend class, calibrated across, fail closed without a
calibration; the report names the tolerance and why (SPEC F1)."""

from __future__ import annotations

import json

import pytest

from cyxwiz.errors import VerificationError
from cyxwiz.verification.replay import ReplayPolicy
from cyxwiz.verification.tolerance import CALIBRATION, SAFETY_FACTOR, tolerance_for
from tests.verification.conftest import World, rebuild_trace
from tests.verification.test_verifier import failed


def test_same_class_is_exact_and_other_pairs_are_calibrated_or_refused() -> None:
    exact = tolerance_for(
        node_class="cpu", node_torch="2.13.0", verifier_class="cpu", verifier_torch="2.13.0", dtype="float32"
    )
    assert exact.exact and exact.value == 0.0 and "bit-for-bit" in exact.reason
    gpu = tolerance_for(
        node_class="cuda-sm90",
        node_torch="2.11.0",
        verifier_class="cpu",
        verifier_torch="2.13.0",
        dtype="float32",
    )
    measured = CALIBRATION[("cuda-sm90", "cpu", "float32")].measured_max
    assert not gpu.exact and gpu.value == pytest.approx(measured * SAFETY_FACTOR) and gpu.value < 1e-3
    assert "H200" in gpu.reason and "safety factor" in gpu.reason
    for node_class, torch_version in (("cuda-sm80", "2.13.0"), ("cpu", "2.12.0")):
        with pytest.raises(VerificationError) as info:
            tolerance_for(
                node_class=node_class,
                node_torch=torch_version,
                verifier_class="cpu",
                verifier_torch="2.13.0",
                dtype="float32",
            )
        assert info.value.rule == "F1" and "no replay calibration" in info.value.message


def declare(out: object, device_class: str) -> None:
    from pathlib import Path

    assert isinstance(out, Path)
    doc = json.loads((out / "runtime.json").read_text())
    doc["device_class"] = device_class
    (out / "runtime.json").write_text(json.dumps(doc))


def test_a_gpu_node_is_judged_with_the_calibrated_tolerance(world: World) -> None:
    out = world.copy_outputs("declared-gpu")
    declare(out, "cuda-sm90")
    report = world.verify(out, world.sign(out))
    assert report.passed, report.to_markdown()
    assert (
        report.summary["tolerance"] == pytest.approx(5.47e-5) and "H200" in report.summary["tolerance_reason"]
    )


def test_claiming_a_gpu_does_not_buy_the_old_drift(world: World) -> None:
    out = world.copy_outputs("declared-gpu-drift")

    def drift(step: int, tensors: dict) -> dict | None:  # type: ignore[type-arg]
        if step == 0:
            return None
        return {
            k: v * (1 + 1e-3) if k.startswith("model.") and v.is_floating_point() else v
            for k, v in tensors.items()
        }

    rebuild_trace(out, drift)
    declare(out, "cuda-sm90")
    report = world.verify(out, world.sign(out), policy=ReplayPolicy(sample_seed=2))
    failed(report, "replay", "beyond the tolerance", "cuda-sm90")


def test_an_uncalibrated_class_fails_closed(world: World) -> None:
    out = world.copy_outputs("declared-unknown")
    declare(out, "cuda-sm80")
    failed(world.verify(out, world.sign(out)), "replay", "no tolerance", "cuda-sm80")
