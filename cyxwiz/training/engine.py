"""The deterministic training step shared by the runtime (on the node) and the verifier's replay.

Everything random is derived from the run seed — the signed public seed mixed with the per-job secret
the control plane adds after assignment and the PeerID of the node that trains and signs the completion
proof (:func:`run_seed`; :mod:`cyxwiz.verification.binding` says why): initial weights from
``(run seed, "init")``,
the validation split and the data order from :class:`~cyxwiz.training.data.DataOrder`, and each step's
dropout from ``(run seed, step)``. None of it lives in a checkpoint, so training from any committed
checkpoint replays without the history before it, and a node cannot steer it through what it commits.

A checkpoint holds exactly the state the runtime restores: the model's state dict (weights and buffers
such as BatchNorm statistics and their ``num_batches_tracked`` counters) and the optimizer's per-parameter
state (moments and ``step`` counters). Its serialisation is deterministic (:func:`checkpoint_bytes`), so
"the replay reproduces the checkpoint" is a comparison of SHA-256 digests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from cyxwiz.errors import ValidationError, VerificationError
from cyxwiz.training.data import DataOrder, Dataset, split_validation
from cyxwiz.training.determinism import derived_seed, make_deterministic, seed_step
from cyxwiz.training.model import GraphModel, build_model
from cyxwiz.training.spec import TrainingJob

__all__ = [  # the determinism helpers are re-exported: runtime, verifier and tests know them from here
    "TrainingState",
    "binds_trainer",
    "checkpoint_bytes",
    "checkpoint_tensors",
    "counter_value",
    "derived_seed",
    "evaluate",
    "flat_parameters",
    "is_counter",
    "load_checkpoint",
    "make_deterministic",
    "new_state",
    "read_checkpoint",
    "run_seed",
    "save_checkpoint",
    "seed_step",
    "train_step",
]


def binds_trainer(job: TrainingJob) -> bool:
    """Whether the run seed of ``job`` mixes in the trainer's PeerID (see :mod:`cyxwiz.verification.binding`):
    every job bound to a per-job secret, except the two shares of a redundant job, which must train one
    run so the referee can compare their chains."""
    return job.training.job_secret is not None and job.verification.mode != "redundant"


def run_seed(job: TrainingJob, *, trainer: str | None) -> int:
    """The seed every random choice of the run derives from.

    The public seed alone for a job without a per-job secret (a local run: no signer, reproducible by
    anyone); the public seed and the secret for the shares of a redundant job; otherwise the public seed,
    the secret and ``trainer``, the PeerID (A5) of the node whose certificate signs the completion proof.
    The node takes it from its own certificate, the verifier from the key that signed the proof it judges;
    neither from the job document. A bound job without a trainer is refused, never trained unbound.
    """
    secret = job.training.job_secret
    if secret is None:
        return job.training.seed
    material = f"cyxwiz-run:{job.training.seed}:{secret}"
    if binds_trainer(job):
        if trainer is None:
            raise ValidationError(
                "a job bound to a per-job secret trains for the node that signs its proof: name its PeerID",
                field="trainer",
                rule="F1",
            )
        material = f"{material}:{_peer_id(trainer)}"
    digest = hashlib.sha256(material.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _peer_id(text: str) -> str:
    """``text`` if it is an Ed25519 libp2p PeerID in its one canonical spelling (A5), else ValidationError."""
    from cyxwiz.pki.peerid import peer_id, public_key_from_peer_id

    try:
        canonical = peer_id(public_key_from_peer_id(text))
    except (ValidationError, ValueError):
        canonical = None
    if canonical != text:
        raise ValidationError("the trainer is not an Ed25519 PeerID (12D3KooW…)", field="trainer", rule="A5")
    return text


@dataclass
class TrainingState:
    job: TrainingJob
    seed: int
    model: GraphModel
    optimizer: torch.optim.Optimizer
    train: Dataset
    validation: Dataset
    order: DataOrder
    device: torch.device


def _optimizer(job: TrainingJob, model: GraphModel) -> torch.optim.Optimizer:
    hp = job.training.hyperparameters
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)


def new_state(job: TrainingJob, data: Dataset, *, trainer: str | None, device: str = "cpu") -> TrainingState:
    """Fresh model (weights from the seed) and optimizer for ``job`` on the full training file ``data``,
    trained by the node whose PeerID is ``trainer`` (:func:`run_seed`)."""
    assert job.model is not None, "model jobs only"
    seed = run_seed(job, trainer=trainer)
    torch.manual_seed(derived_seed(seed, "init"))
    target = torch.device(device)
    model = build_model(job.model).to(target)
    train_idx, val_idx = split_validation(len(data), seed=seed, fraction=job.training.validation_fraction)
    train = data.subset(train_idx)
    hp = job.training.hyperparameters
    order = DataOrder(seed=seed, n=len(train), batch_size=hp.batch_size, epochs=hp.epochs)
    return TrainingState(
        job=job,
        seed=seed,
        model=model,
        optimizer=_optimizer(job, model),
        train=train,
        validation=data.subset(val_idx),
        order=order,
        device=target,
    )


def train_step(state: TrainingState, step: int) -> float:
    """One optimizer step on the batch the data order fixes for ``step``; returns the loss."""
    rows = state.order.batch(step)
    x = torch.from_numpy(state.train.x[rows]).to(state.device)
    y = torch.from_numpy(state.train.y[rows]).to(state.device)
    seed_step(state.seed, step)  # this step's dropout, from the run seed (CPU generator on any device)
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    loss = state.model.loss(state.model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    state.optimizer.step()
    return float(loss.detach())


def checkpoint_tensors(state: TrainingState) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in state.model.state_dict().items()}
    for index, slots in state.optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().to("cpu").reshape(value.shape).contiguous()
    return tensors


def checkpoint_bytes(state: TrainingState, *, step: int) -> bytes:
    """The checkpoint file of ``state`` at ``step`` (safetensors; the same state gives the same bytes)."""
    return save_bytes(checkpoint_tensors(state), metadata={"step": str(step)})


def save_checkpoint(state: TrainingState, path: Path, *, step: int) -> str:
    """Write a checkpoint (model + optimizer state, safetensors); return the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = checkpoint_bytes(state, step=step)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def is_counter(key: str) -> bool:
    """Checkpoint entries that count steps: optimizer ``step`` and BatchNorm ``num_batches_tracked``."""
    return key.endswith(".num_batches_tracked") or (key.startswith("optim.") and key.endswith(".step"))


def counter_value(key: str, step: int) -> int:
    """What a counter entry must hold after ``step`` optimizer steps (one train-mode forward per step)."""
    del key  # both kinds advance once per optimizer step in this runtime
    return step


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file (safetensors: no code runs while loading untrusted files)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise VerificationError(f"unreadable checkpoint: {exc}", path=path.name) from None


def load_checkpoint(state: TrainingState, tensors: dict[str, torch.Tensor]) -> None:
    """Put model and optimizer state from a checkpoint into ``state``; refuses foreign tensor sets."""
    model_part = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        state.model.load_state_dict(model_part, strict=True)
    except RuntimeError as exc:
        raise VerificationError(f"checkpoint does not fit the model: {str(exc)[:200]}") from None
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            # Copies: the optimizer updates its state in place and must not write into the caller's tensors.
            # Non-capturable optimizers keep their step counters on the CPU, whatever the device.
            owned = value.clone() if name == "step" else value.to(state.device, copy=True)
            slots.setdefault(int(index), {})[name] = owned
    current = state.optimizer.state_dict()
    try:
        state.optimizer.load_state_dict({"state": slots, "param_groups": current["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise VerificationError(f"checkpoint optimizer state does not fit: {exc}") from None


def evaluate(model: GraphModel, data: Dataset, *, device: torch.device | None = None) -> dict[str, float]:
    """Accuracy and mean loss of ``model`` on ``data`` (eval mode, no gradients)."""
    if len(data) == 0:
        return {"accuracy": 0.0, "loss": 0.0}
    model.eval()
    target = device or torch.device("cpu")
    with torch.no_grad():
        x = torch.from_numpy(data.x).to(target)
        y = torch.from_numpy(data.y).to(target)
        out = model(x)
        loss = float(model.loss(out, y))
        accuracy = float((out.argmax(dim=1) == y).float().mean())
    return {"accuracy": accuracy, "loss": loss}


def flat_parameters(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """All model tensors of a checkpoint as one float64 vector, in key order (for distances)."""
    keys = sorted(k for k in tensors if k.startswith("model.") and tensors[k].is_floating_point())
    if not keys:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([tensors[k].reshape(-1).to(torch.float64) for k in keys])
