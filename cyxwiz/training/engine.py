"""The deterministic training step shared by the runtime (on the node) and the verifier's replay.

Everything random is derived from the signed seed: initial weights from ``(seed, "init")``, the data
order from :class:`~cyxwiz.training.data.DataOrder`, and each step's dropout from ``(seed, step)`` —
so training from any committed checkpoint can be replayed without the history before it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cyxwiz.errors import VerificationError
from cyxwiz.training.data import DataOrder, Dataset, split_validation
from cyxwiz.training.model import GraphModel, build_model
from cyxwiz.training.spec import TrainingJob


def derived_seed(seed: int, purpose: str | int) -> int:
    digest = hashlib.sha256(f"cyxwiz:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def make_deterministic(*, threads: int = 1) -> None:
    """Deterministic kernels; one thread, so float reductions happen in the same order every time."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def _seed(value: int, device: torch.device) -> None:
    # torch.manual_seed also queues a CUDA seeding (with a captured stack trace) on every call: on CPU
    # that costs more than a small training step, so seed only the generator the device uses.
    if device.type == "cuda":
        torch.cuda.manual_seed(value)
    else:
        torch.default_generator.manual_seed(value)


@dataclass
class TrainingState:
    job: TrainingJob
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


def new_state(job: TrainingJob, data: Dataset, *, device: str = "cpu") -> TrainingState:
    """Fresh model (weights from the seed) and optimizer for ``job`` on the full training file ``data``."""
    assert job.model is not None, "model jobs only"
    torch.manual_seed(derived_seed(job.training.seed, "init"))
    target = torch.device(device)
    model = build_model(job.model).to(target)
    train_idx, val_idx = split_validation(
        len(data), seed=job.training.seed, fraction=job.training.validation_fraction
    )
    train = data.subset(train_idx)
    hp = job.training.hyperparameters
    order = DataOrder(seed=job.training.seed, n=len(train), batch_size=hp.batch_size, epochs=hp.epochs)
    return TrainingState(
        job=job,
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
    _seed(derived_seed(state.job.training.seed, step), state.device)  # this step's dropout, from the seed
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


def save_checkpoint(state: TrainingState, path: Path, *, step: int) -> str:
    """Write a checkpoint (model + optimizer state, safetensors); return the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_tensors(state), str(path), metadata={"step": str(step)})
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
            slots.setdefault(int(index), {})[name] = value.to(state.device)
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
