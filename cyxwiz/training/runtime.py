"""The training runtime: ``python -m cyxwiz.training.runtime --job /input/job.json`` (runs in the sandbox).

It trains a ``model`` job exactly as the signed spec says (seed, data order, hyper-parameters), with
deterministic kernels, for the node named by ``--trainer`` (the PeerID of the certificate that will sign
the completion proof; the node agent reads it from its own certificate, never from the job document:
:mod:`cyxwiz.verification.binding`). Every ``checkpoint_every`` steps it writes a checkpoint under
``/output`` and sends a commitment (checkpoint SHA-256 + batch-indices SHA-256) over the job bridge; at
the end it writes ``model.safetensors``, ``metrics.json``, ``commitments.json`` and ``runtime.json``
(the device class, so the verifier knows which replay tolerance applies). Progress goes over the bridge
only (``$CYXWIZ_BRIDGE``); without a bridge (tests, local runs) it is printed to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cyxwiz.errors import CyxwizError, ValidationError
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.commitments import COMMITMENTS_FILE, GENESIS, Commitment, write_commitments

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
RUNTIME_FILE = "runtime.json"
#: The metric a ``model`` job claims (validation accuracy on the seeded split of its training file).
CLAIMED_METRIC = "val_accuracy"


class Reporter(Protocol):
    def progress(self, step: int, total: int) -> None: ...
    def metrics(self, step: int, values: dict[str, float]) -> None: ...
    def checkpoint(self, step: int, weights_sha256: str, batch_indices_sha256: str, path: str) -> None: ...
    def close(self) -> None: ...


class StderrReporter:
    """Used when no bridge exists: a line per report, so a local run shows what happens."""

    def progress(self, step: int, total: int) -> None:
        print(f"progress {step}/{total}", file=sys.stderr)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        print(f"metrics step={step} {shown}", file=sys.stderr)

    def checkpoint(self, step: int, weights_sha256: str, batch_indices_sha256: str, path: str) -> None:
        print(f"checkpoint step={step} sha256={weights_sha256[:16]}…", file=sys.stderr)

    def close(self) -> None:
        return None


class RecordingReporter:
    """Keeps every report as the bridge message it would be (for in-process tests and the bench)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []

    def progress(self, step: int, total: int) -> None:
        self.messages.append({"v": 1, "kind": "progress", "step": step, "total": total})

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.messages.append({"v": 1, "kind": "metrics", "step": step, "values": dict(values)})

    def checkpoint(self, step: int, weights_sha256: str, batch_indices_sha256: str, path: str) -> None:
        self.messages.append(
            {
                "v": 1,
                "kind": "checkpoint",
                "step": step,
                "weights_sha256": weights_sha256,
                "batch_indices_sha256": batch_indices_sha256,
                "path": path,
            }
        )

    def close(self) -> None:
        return None


def default_reporter(job_id: str) -> Reporter:
    """The job bridge when ``$CYXWIZ_BRIDGE`` is set, stderr lines otherwise."""
    import os

    from cyxwiz.sandbox.bridge_client import ENV_VAR, BridgeClient

    if not os.environ.get(ENV_VAR):
        return StderrReporter()
    client = BridgeClient.from_env()
    client.hello(job_id)
    return client


@dataclass(frozen=True)
class RunSummary:
    steps: int
    checkpoints: int
    metrics: dict[str, float]
    seconds: float


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_DIR}/step-{step:08d}.safetensors"


def segment_length(job: TrainingJob, total: int) -> int:
    """Steps per checkpoint: the spec's number, or the ``auto`` schedule that lets the verification
    target fit its budget (issue 20)."""
    from cyxwiz.verification.sampling import segment_steps

    v = job.verification
    return segment_steps(
        total,
        requested=job.training.checkpoint_every,
        target_fraction=v.target_fraction,
        confidence=v.confidence,
        budget=v.budget,
    )


def checkpoint_steps(total: int, every: int) -> list[int]:
    """Steps at which checkpoints are due: 0, every, 2·every, …, and always the last step."""
    steps = list(range(0, total, every))
    steps.append(total)
    return steps


def run_training(
    job_path: Path,
    *,
    data_path: Path,
    output_dir: Path,
    trainer: str | None,
    reporter: Reporter | None = None,
    device: str = "cpu",
    device_class: str = "cpu",
) -> RunSummary:
    """Train the job at ``job_path`` on ``data_path`` as the node whose PeerID is ``trainer`` (None only for
    a job without a per-job secret), writing every artifact under ``output_dir``."""
    from cyxwiz.training import engine
    from cyxwiz.training.data import load_dataset
    from cyxwiz.training.spec import parse_training_job

    started = time.perf_counter()
    try:
        text = job_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"cannot read the job: {exc.strerror}", path=str(job_path)) from None
    # The coordinator validated and signed this document; the runtime checks it again all the same.
    job = parse_training_job(text, allow_file_uris=True)
    if job.job_type != "model" or job.model is None:
        raise ValidationError(
            "the runtime trains model jobs; script jobs run the user's train.py directly",
            field="job_type",
            rule="G1",
        )
    data = load_dataset(
        data_path,
        sha256=job.dataset.sha256,
        input_shape=job.model.input_shape,
        input_dtype=job.model.input_dtype,
        num_classes=job.task.num_classes,
    )
    engine.make_deterministic()
    state = engine.new_state(job, data, trainer=trainer, device=device)  # refuses a bound job without trainer
    report = reporter or default_reporter(job.job_id)
    total = state.order.total_steps
    due = set(checkpoint_steps(total, segment_length(job, total)))
    output_dir.mkdir(parents=True, exist_ok=True)
    commitments: list[Commitment] = []
    prev_hash, prev_step = GENESIS, 0
    losses: list[float] = []
    try:
        for step in range(total + 1):
            if step in due:
                rel = checkpoint_name(step)
                weights = engine.save_checkpoint(state, output_dir / rel, step=step)
                batches = state.order.segment_sha256(prev_step, step)
                commitment = Commitment(
                    step=step, weights_sha256=weights, batch_indices_sha256=batches, prev=prev_hash, path=rel
                )
                commitments.append(commitment)
                prev_hash, prev_step = commitment.digest(), step
                report.checkpoint(step, weights, batches, rel)
                report.progress(step, total)
                if losses:
                    report.metrics(step, {"train_loss": sum(losses) / len(losses)})
                    losses = []
            if step < total:
                losses.append(engine.train_step(state, step))
        final = engine.evaluate(state.model, state.validation, device=state.device)
        metrics = {CLAIMED_METRIC: final["accuracy"], "val_loss": final["loss"], "steps": float(total)}
        report.metrics(total, metrics)
    finally:
        report.close()
    from safetensors.torch import save_file

    from cyxwiz.training.device import DeviceSelection, runtime_info

    save_file(
        {k: v.to("cpu").contiguous() for k, v in state.model.state_dict().items()},
        str(output_dir / MODEL_FILE),
    )
    write_commitments(output_dir / COMMITMENTS_FILE, commitments)
    info = runtime_info(DeviceSelection(device=device, device_class=device_class, name=device))
    (output_dir / RUNTIME_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    (output_dir / METRICS_FILE).write_text(
        json.dumps({"final": metrics, "job_id": job.job_id, "job_spec_sha256": job.sha256()}, indent=1)
        + "\n",
        encoding="utf-8",
    )
    return RunSummary(
        steps=total, checkpoints=len(commitments), metrics=metrics, seconds=time.perf_counter() - started
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cyxwiz.training.runtime", description=__doc__)
    parser.add_argument("--job", type=Path, default=Path("/input/job.json"))
    parser.add_argument("--data", type=Path, default=Path("/input/dataset.npz"))
    parser.add_argument("--output", type=Path, default=Path("/output"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--trainer",
        default=None,
        help="PeerID (12D3KooW…) of the node certificate that signs the proof (jobs with a per-job secret)",
    )
    args = parser.parse_args(argv)
    try:
        import os

        from cyxwiz.training.device import select_device

        selection = select_device(args.device, env=dict(os.environ))
        summary = run_training(
            args.job,
            data_path=args.data,
            output_dir=args.output,
            trainer=args.trainer,
            device=selection.device,
            device_class=selection.device_class,
        )
    except CyxwizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "steps": summary.steps,
                "checkpoints": summary.checkpoints,
                "metrics": summary.metrics,
                "seconds": round(summary.seconds, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
