"""Replay tolerances: exact within a backend class, calibrated across (issue 20: exact replay).

Training and replay both run in deterministic mode (:func:`cyxwiz.training.engine.make_deterministic`),
so when the node and the verifier run the same backend class with the same torch build a segment must
reproduce bit for bit: the checkpoint digest of the replay equals the committed one, tolerance 0.
Across backends (GPU↔CPU, GPU generations) float operations round differently; the accepted distance is
the largest honest distance measured for that (node class, verifier class, dtype) times a safety factor,
never a fixed constant. A pair with no measurement is refused (fail closed) rather than guessed.

Distance of a segment: ‖replayed − committed‖ / ‖committed − start‖ over the model tensors (the update
the segment made), and separately over the optimizer tensors; counters must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from cyxwiz.errors import VerificationError

#: Honest cross-backend distances are multiplied by this before they become a tolerance: a tenth of the
#: tolerance is what calibration saw, the rest absorbs longer segments and other models of the same size.
SAFETY_FACTOR = 10.0


@dataclass(frozen=True, kw_only=True)
class Calibration:
    node_class: str
    verifier_class: str
    dtype: str
    #: The largest honest relative distance measured for this pair (0 for exact pairs).
    measured_max: float
    source: str

    @property
    def tolerance(self) -> float:
        return self.measured_max * SAFETY_FACTOR


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    value: float
    exact: bool
    reason: str


#: Measured pairs: (node class, verifier class, dtype) → calibration. Same class + same torch build is
#: exact and needs no entry. GPU figures come from ``python -m bench.gpu_replay`` (bench/RESULTS.md).
CALIBRATION: dict[tuple[str, str, str], Calibration] = {}


def _register(calibration: Calibration) -> None:
    CALIBRATION[(calibration.node_class, calibration.verifier_class, calibration.dtype)] = calibration


# bench/gpu_replay_h200.json: GPU↔GPU reproduced all 80 segments bit for bit; GPU↔CPU the largest model
# distance was 5.47e-6 (wide MLP; optimizer 1.36e-6, reference MLP 4.7e-7).
_register(
    Calibration(
        node_class="cuda-sm90",
        verifier_class="cpu",
        dtype="float32",
        measured_max=5.47e-6,
        source="python -m bench.gpu_replay on an NVIDIA H200, torch 2.11.0+cu130 vs 2.13.0 CPU: 2×40 "
        "segments of 4 Adam steps, MLPs of 4,810 and 301,066 parameters, 2026-11-30",
    )
)


def tolerance_for(
    *, node_class: str, node_torch: str, verifier_class: str, verifier_torch: str, dtype: str
) -> Tolerance:
    """The tolerance a replay of this node's segments uses, and why; VerificationError when uncalibrated."""
    if node_class == verifier_class and node_torch == verifier_torch:
        return Tolerance(
            value=0.0,
            exact=True,
            reason=f"same backend class ({node_class}, torch {node_torch}) in deterministic mode: "
            "bit-for-bit (checkpoint SHA-256 equal)",
        )
    found = CALIBRATION.get((node_class, verifier_class, dtype))
    if found is None:
        raise VerificationError(
            f"no replay calibration for node {node_class} (torch {node_torch}) against verifier "
            f"{verifier_class} (torch {verifier_torch}) in {dtype}",
            field="runtime.device_class",
            rule="F1",
            hint="run `python -m bench.gpu_replay` on that device class and record the distances, "
            "or verify on a machine of the node's class",
        )
    return Tolerance(
        value=found.tolerance,
        exact=False,
        reason=f"{node_class}↔{verifier_class} {dtype}: calibrated max {found.measured_max:.3g} × "
        f"safety factor {SAFETY_FACTOR:g} = {found.tolerance:.3g} ({found.source})",
    )
