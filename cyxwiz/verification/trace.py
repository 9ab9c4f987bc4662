"""Checks of the committed trace: commitments, endpoints, and how a committed checkpoint is read.

The replay (:mod:`cyxwiz.verification.replay`) trusts the start checkpoint of each segment it replays,
so every checkpoint the checks read goes through :func:`read_checkpoint` (issue 20): the file must be the
committed one (SHA-256), hold exactly the tensors a run of this spec has at that step (names, dtypes,
shapes — extra, missing or reshaped state is refused), name its step in its metadata, and carry counters
(optimizer ``step``, BatchNorm ``num_batches_tracked``) equal to that step. What remains free in a start
checkpoint — weights and optimizer moments — is exactly what the end-of-segment comparison of the
previous segment reproduces bit for bit, so forging it costs a forged segment that a replay catches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes

from cyxwiz.errors import CyxwizError, VerificationError
from cyxwiz.training import engine
from cyxwiz.training.data import DataOrder, Dataset
from cyxwiz.training.runtime import MODEL_FILE, checkpoint_name, checkpoint_steps
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.commitments import Commitment, check_chain, commitments_root
from cyxwiz.verification.proof import CompletionProof
from cyxwiz.verification.report import Check

#: name → (dtype, shape) of every tensor a checkpoint holds.
Schema = dict[str, tuple[str, tuple[int, ...]]]
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StateSchemas:
    """What a checkpoint of this spec holds at step 0 (fresh optimizer) and after any step."""

    initial: Schema
    trained: Schema

    def at(self, step: int) -> Schema:
        return self.initial if step == 0 else self.trained

    @classmethod
    def of(cls, job: TrainingJob, data: Dataset, *, trainer: str | None) -> StateSchemas:
        state = engine.new_state(job, data, trainer=trainer)
        initial = _schema_of(engine.checkpoint_tensors(state))
        if state.order.total_steps:
            engine.train_step(state, 0)  # one step creates the optimizer's per-parameter state
        return cls(initial=initial, trained=_schema_of(engine.checkpoint_tensors(state)))


def _schema_of(tensors: dict[str, torch.Tensor]) -> Schema:
    return {
        key: (str(value.dtype).removeprefix("torch."), tuple(int(d) for d in value.shape))
        for key, value in tensors.items()
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
                f"batch indices committed at step {c.step} are not the data order of the spec's seed, "
                "this job's secret and the signing node's PeerID (another job's or another node's run)",
            )
        prev = c.step
    return Check(
        "commitments",
        True,
        f"{len(commitments)} checkpoints every {segment_steps} steps, chain and data order match the spec",
        {"checkpoints": len(commitments), "steps": order_steps, "segment_steps": segment_steps},
    )


class CheckpointRefused(VerificationError):
    """A checkpoint the training checks read is not the committed file or holds other state."""


def read_checkpoint(output_dir: Path, commitment: Commitment, schema: Schema) -> Tensors:
    """Read a committed checkpoint the way the replay trusts it: the file's SHA-256 is the commitment's
    (D3), it holds exactly ``schema``, its metadata names its step and its counters equal that step."""
    where = f"checkpoint of step {commitment.step}"
    try:
        data = (output_dir / commitment.path).read_bytes()
    except OSError as exc:
        raise CheckpointRefused(f"{where} is unreadable: {exc.strerror}", path=commitment.path) from None
    if hashlib.sha256(data).hexdigest() != commitment.weights_sha256:
        raise CheckpointRefused(
            f"{where} does not match its commitment (changed after signing)", path=commitment.path, rule="D3"
        )
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        tensors = load_bytes(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointRefused(f"{where} is not a safetensors file: {exc}", path=commitment.path) from None
    metadata = header.pop("__metadata__", None) or {}
    if metadata.get("step") != str(commitment.step):
        raise CheckpointRefused(f"{where}: its metadata says step {metadata.get('step')!r}")
    if set(header) != set(schema):
        extra, missing = sorted(set(header) - set(schema))[:3], sorted(set(schema) - set(header))[:3]
        raise CheckpointRefused(
            f"{where} holds other state than the runtime restores (extra {extra}, missing {missing})"
        )
    for key, value in tensors.items():
        if _schema_of({key: value})[key] != schema[key]:
            raise CheckpointRefused(f"{where}: {key} has another dtype or shape than {schema[key]}")
        if engine.is_counter(key) and (
            value.numel() != 1 or float(value.item()) != engine.counter_value(key, commitment.step)
        ):
            raise CheckpointRefused(f"{where}: counter {key} is {value.tolist()}, not its step")
    return tensors


def check_endpoints(
    job: TrainingJob,
    data: Dataset,
    output_dir: Path,
    commitments: Sequence[Commitment],
    schemas: StateSchemas,
    *,
    trainer: str | None,
) -> Check:
    """The first checkpoint is the seeded initialisation of ``trainer``'s run (bit for bit); the last is the
    delivered model."""
    fresh = engine.new_state(job, data, trainer=trainer)
    if hashlib.sha256(engine.checkpoint_bytes(fresh, step=0)).hexdigest() != commitments[0].weights_sha256:
        return Check(
            "endpoints",
            False,
            "the step-0 checkpoint is not the initialisation of the spec's seed, this job's secret and the "
            "signing node's PeerID (changed seed, another job's or another node's run, or weights from "
            "elsewhere)",
        )
    try:
        final = read_checkpoint(output_dir, commitments[-1], schemas.at(commitments[-1].step))
    except CheckpointRefused as exc:
        return Check("checkpoint-state", False, f"{exc.message} (state the checks would trust)")
    last = {k.removeprefix("model."): v for k, v in final.items() if k.startswith("model.")}
    delivered = engine.read_checkpoint(output_dir / MODEL_FILE)
    if last.keys() != delivered.keys() or not all(_equal(last[k], delivered[k]) for k in last):
        return Check("endpoints", False, "the delivered model is not the last committed checkpoint")
    return Check("endpoints", True, "step-0 checkpoint = seeded initialisation; model = last checkpoint")


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)
