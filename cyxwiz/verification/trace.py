"""Checks of the committed trace before any replay: commitments, checkpoint state, endpoints.

The replay (:mod:`cyxwiz.verification.replay`) trusts the start checkpoint of each segment it replays,
so what a checkpoint may carry is pinned here for *every* checkpoint, replayed or not (issue 20):
exactly the tensors a run of this spec has at that step (names, dtypes, shapes — a checkpoint with extra,
missing or reshaped state is refused), the step recorded in its metadata, and its counters (optimizer
``step``, BatchNorm ``num_batches_tracked``) equal to the committed step. What remains free in a start
checkpoint — weights and optimizer moments — is exactly what the end-of-segment comparison of the
previous segment reproduces bit for bit, so forging it costs a forged segment that a replay catches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from cyxwiz.errors import CyxwizError
from cyxwiz.training import engine
from cyxwiz.training.data import DataOrder, Dataset
from cyxwiz.training.runtime import MODEL_FILE, checkpoint_name, checkpoint_steps
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.commitments import Commitment, check_chain, commitments_root
from cyxwiz.verification.proof import CompletionProof
from cyxwiz.verification.report import Check

#: name → (dtype, shape) of every tensor a checkpoint holds.
Schema = dict[str, tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class StateSchemas:
    """What a checkpoint of this spec holds at step 0 (fresh optimizer) and after any step."""

    initial: Schema
    trained: Schema

    def at(self, step: int) -> Schema:
        return self.initial if step == 0 else self.trained

    @classmethod
    def of(cls, job: TrainingJob, data: Dataset) -> StateSchemas:
        state = engine.new_state(job, data)
        initial = _schema_of(engine.checkpoint_tensors(state))
        if state.order.total_steps:
            engine.train_step(state, 0)  # one step creates the optimizer's per-parameter state
        return cls(initial=initial, trained=_schema_of(engine.checkpoint_tensors(state)))


def _schema_of(tensors: dict[str, torch.Tensor]) -> Schema:
    return {
        key: (str(value.dtype).removeprefix("torch."), tuple(int(d) for d in value.shape))
        for key, value in tensors.items()
    }


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def check_commitments(
    order: DataOrder, segment_steps: int, proof: CompletionProof, commitments: Sequence[Commitment]
) -> Check:
    """Root, chain, schedule, checkpoint hashes and data order of the committed checkpoints."""
    order_steps = order.total_steps
    if (
        commitments_root(commitments) != proof.checkpoints.merkle_root
        or len(commitments) != proof.checkpoints.count
    ):
        return Check("commitments", False, "commitments.json does not match the Merkle root the proof signs")
    try:
        check_chain(commitments)
    except CyxwizError as exc:
        return Check("commitments", False, f"broken commitment chain: {exc.message} ({exc.field})")
    expected = checkpoint_steps(order_steps, segment_steps)
    steps = [c.step for c in commitments]
    if steps != expected:
        missing = sorted(set(expected) - set(steps))[:5]
        extra = sorted(set(steps) - set(expected))[:5]
        return Check(
            "commitments",
            False,
            f"checkpoint schedule differs from the spec (every {segment_steps} of {order_steps} "
            f"steps): missing {missing}, unexpected {extra}",
            {"committed": len(steps), "expected": len(expected)},
        )
    prev = 0
    for c in commitments:
        if c.path != checkpoint_name(c.step) or proof.artifacts.get(c.path) != c.weights_sha256:
            return Check("commitments", False, f"checkpoint of step {c.step} is not the committed file")
        if c.batch_indices_sha256 != order.segment_sha256(prev, c.step):
            return Check(
                "commitments",
                False,
                f"batch indices committed at step {c.step} are not the data order of the spec's seed "
                "and this job's secret",
            )
        prev = c.step
    return Check(
        "commitments",
        True,
        f"{len(commitments)} checkpoints every {segment_steps} steps, chain and data order match the spec",
        {"checkpoints": len(commitments), "steps": order_steps, "segment_steps": segment_steps},
    )


def _state_problem(path: Path, step: int, schema: Schema) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("step") != str(step):
                return f"its metadata says step {metadata.get('step')!r}"
            keys = set(handle.keys())
            if keys != set(schema):
                extra, missing = sorted(keys - set(schema))[:3], sorted(set(schema) - keys)[:3]
                return f"it holds other state than the runtime restores (extra {extra}, missing {missing})"
            for key in sorted(keys):
                view = handle.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype(), view.get_dtype())
                if (dtype, tuple(view.get_shape())) != schema[key]:
                    return f"{key} has dtype/shape {dtype}{view.get_shape()}, expected {schema[key]}"
                if engine.is_counter(key):
                    value = handle.get_tensor(key)
                    if value.numel() != 1 or float(value.item()) != engine.counter_value(key, step):
                        return f"counter {key} is {value.tolist()}, not step {step}"
    except (SafetensorError, OSError, ValueError) as exc:
        return f"unreadable: {exc}"
    return None


def check_state(output_dir: Path, commitments: Sequence[Commitment], schemas: StateSchemas) -> Check:
    """Every checkpoint holds exactly this spec's state, with counters equal to its committed step."""
    for c in commitments:
        problem = _state_problem(output_dir / c.path, c.step, schemas.at(c.step))
        if problem is not None:
            return Check(
                "checkpoint-state",
                False,
                f"checkpoint of step {c.step} is refused: {problem} (state the replay would trust)",
                {"step": c.step},
            )
    return Check(
        "checkpoint-state",
        True,
        f"{len(commitments)} checkpoints hold exactly the restored state; counters match their steps",
    )


def check_endpoints(
    job: TrainingJob, data: Dataset, output_dir: Path, commitments: Sequence[Commitment]
) -> Check:
    """The first checkpoint is the seeded initialisation (bit for bit); the last is the delivered model."""
    fresh = engine.new_state(job, data)
    if hashlib.sha256(engine.checkpoint_bytes(fresh, step=0)).hexdigest() != commitments[0].weights_sha256:
        return Check(
            "endpoints",
            False,
            "the step-0 checkpoint is not the initialisation of the spec's seed and this job's secret "
            "(changed seed, another job's run, or weights from elsewhere)",
        )
    last = {
        k.removeprefix("model."): v
        for k, v in engine.read_checkpoint(output_dir / commitments[-1].path).items()
        if k.startswith("model.")
    }
    delivered = engine.read_checkpoint(output_dir / MODEL_FILE)
    if last.keys() != delivered.keys() or not all(_equal(last[k], delivered[k]) for k in last):
        return Check("endpoints", False, "the delivered model is not the last committed checkpoint")
    return Check("endpoints", True, "step-0 checkpoint = seeded initialisation; model = last checkpoint")


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)
