"""Where the runtime trains: device choice, the GPU memory cap, and the device class a run declares.

The sandbox cannot limit GPU memory through the kernel (SPEC E2): it hands the cap to the runtime in
``CYXWIZ_GPU_MEMORY_BYTES`` and the runtime applies it as a per-process fraction before the first
allocation. The device class (``cpu`` or ``cuda-sm<major><minor>``) goes into ``runtime.json`` so the
verifier knows which calibrated replay tolerance applies (issue 20). Every CUDA query goes through a
:class:`CudaProbe`, so the selection logic is tested on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from cyxwiz.errors import ConfigError

MEMORY_ENV = "CYXWIZ_GPU_MEMORY_BYTES"
#: Below this share of the card the runtime would not even fit its CUDA context: refuse, don't crawl.
_MIN_FRACTION = 0.01

DeviceChoice = Literal["auto", "cpu", "cuda"]


class CudaProbe(Protocol):
    def available(self) -> bool: ...
    def total_memory(self) -> int: ...
    def capability(self) -> tuple[int, int]: ...
    def name(self) -> str: ...
    def set_memory_fraction(self, fraction: float) -> None: ...


class TorchCuda:
    """The real probe (imports torch on use)."""

    def available(self) -> bool:
        import torch

        return bool(torch.cuda.is_available())

    def total_memory(self) -> int:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)

    def capability(self) -> tuple[int, int]:
        import torch

        major, minor = torch.cuda.get_device_capability(0)
        return int(major), int(minor)

    def name(self) -> str:
        import torch

        return str(torch.cuda.get_device_name(0))

    def set_memory_fraction(self, fraction: float) -> None:
        import torch

        torch.cuda.set_per_process_memory_fraction(fraction, 0)


@dataclass(frozen=True, kw_only=True)
class DeviceSelection:
    device: str
    device_class: str
    memory_fraction: float | None = None
    name: str = "cpu"


def select_device(
    choice: DeviceChoice, *, env: dict[str, str], probe: CudaProbe | None = None
) -> DeviceSelection:
    """Resolve ``choice`` and apply the GPU memory cap from ``env``; ConfigError for impossible asks."""
    cuda = probe or TorchCuda()
    if choice == "cpu" or (choice == "auto" and not cuda.available()):
        return DeviceSelection(device="cpu", device_class="cpu")
    if not cuda.available():
        raise ConfigError("--device cuda but no CUDA device is visible", field="device", rule="E2")
    major, minor = cuda.capability()
    fraction: float | None = None
    cap = env.get(MEMORY_ENV, "")
    if cap:
        if not cap.isdigit() or int(cap) <= 0:
            raise ConfigError("must be a positive number of bytes", field=MEMORY_ENV, rule="E2")
        fraction = min(1.0, int(cap) / cuda.total_memory())
        if fraction < _MIN_FRACTION:
            raise ConfigError(
                f"a GPU memory cap of {int(cap)} bytes is below {_MIN_FRACTION:.0%} of the card",
                field=MEMORY_ENV,
                rule="E2",
            )
        cuda.set_memory_fraction(fraction)
    return DeviceSelection(
        device="cuda", device_class=f"cuda-sm{major}{minor}", memory_fraction=fraction, name=cuda.name()
    )


def runtime_info(selection: DeviceSelection, *, dtype: str = "float32") -> dict[str, object]:
    """What ``runtime.json`` declares: the verifier picks the replay tolerance from it."""
    import torch

    return {
        "device_class": selection.device_class,
        "device_name": selection.name,
        "dtype": dtype,
        "torch": torch.__version__,
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
    }
