"""Deterministic training primitives shared by the runtime, the verifier's replay and the GPU calibration.

Torch only (no pydantic, no project types): ``python -m bench.gpu_replay`` imports this on a GPU machine
that has nothing else of the project's dependencies. :func:`make_deterministic` fixes every knob that
makes float results vary between runs; :func:`seed_step` seeds each step's randomness from the run seed;
:class:`PortableDropout` draws its mask from the CPU generator, so a CUDA run and its CPU replay drop the
same units (CUDA's Philox stream and the CPU's Mersenne Twister give different masks for one seed).
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn

#: cuBLAS needs a fixed workspace for deterministic GEMMs (CUDA ≥ 10.2); these are the two valid settings.
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def derived_seed(seed: int, purpose: str | int) -> int:
    digest = hashlib.sha256(f"cyxwiz:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def make_deterministic(*, threads: int = 1) -> None:
    """Deterministic kernels everywhere (issue 20: exact replay).

    One intra-op thread, so float reductions happen in the same order every time; deterministic
    algorithms (an op without a deterministic kernel raises instead of silently varying); on CUDA a
    fixed cuBLAS workspace, no cuDNN autotuning and no TF32 (TF32 rounds float32 matmuls to 10 mantissa
    bits, which would make GPU↔CPU distances orders of magnitude larger).
    """
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def seed_step(run_seed: int, step: int) -> None:
    """Seed the randomness of one optimizer step (dropout) from the run seed and the step number.

    Only the CPU generator: :class:`PortableDropout` draws there whatever the device. (``torch.manual_seed``
    would also queue a CUDA seeding with a captured stack trace on every call, which on CPU costs more than
    a small training step.)
    """
    torch.default_generator.manual_seed(derived_seed(run_seed, step))


class PortableDropout(nn.Module):
    """Inverted dropout with its mask drawn from the CPU generator, then moved to the input's device."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError("dropout probability must be in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, dtype=torch.float32) >= self.p
        return x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
