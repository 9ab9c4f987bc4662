"""The CUDA path on a CPU machine: device choice, the GPU memory cap, deterministic settings (issue 20;
SPEC E2). The probe stands in for the GPU only; everything else is the runtime's own code."""

from __future__ import annotations

import os

import pytest
import torch

from cyxwiz.errors import ConfigError
from cyxwiz.training import engine
from cyxwiz.training.device import MEMORY_ENV, select_device


class FakeCuda:
    def __init__(self, *, available: bool = True, total: int = 80 << 30) -> None:
        self._available, self._total = available, total
        self.fractions: list[float] = []

    def available(self) -> bool:
        return self._available

    def total_memory(self) -> int:
        return self._total

    def capability(self) -> tuple[int, int]:
        return (9, 0)

    def name(self) -> str:
        return "NVIDIA H200"

    def set_memory_fraction(self, fraction: float) -> None:
        self.fractions.append(fraction)


def test_auto_picks_cuda_when_present_and_names_its_class() -> None:
    probe = FakeCuda()
    chosen = select_device("auto", env={}, probe=probe)
    assert (chosen.device, chosen.device_class, chosen.memory_fraction) == ("cuda", "cuda-sm90", None)
    assert select_device("auto", env={}, probe=FakeCuda(available=False)).device_class == "cpu"
    assert select_device("cpu", env={}, probe=probe).device == "cpu"


def test_gpu_memory_cap_becomes_a_per_process_fraction() -> None:
    probe = FakeCuda(total=80 << 30)
    chosen = select_device("cuda", env={MEMORY_ENV: str(8 << 30)}, probe=probe)
    assert probe.fractions == [pytest.approx(0.1)] and chosen.memory_fraction == pytest.approx(0.1)
    select_device("cuda", env={MEMORY_ENV: str(200 << 30)}, probe=probe)
    assert probe.fractions[-1] == 1.0


@pytest.mark.parametrize("cap", ["-5", "lots", "0", str(1 << 20)])
def test_unusable_caps_are_refused(cap: str) -> None:
    probe = FakeCuda()
    with pytest.raises(ConfigError) as info:
        select_device("cuda", env={MEMORY_ENV: cap}, probe=probe)
    assert info.value.field == MEMORY_ENV and info.value.rule == "E2" and probe.fractions == []


def test_cuda_asked_without_a_gpu_is_refused() -> None:
    with pytest.raises(ConfigError):
        select_device("cuda", env={}, probe=FakeCuda(available=False))


def test_deterministic_mode_fixes_every_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")  # not a deterministic setting: replaced
    engine.make_deterministic()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
