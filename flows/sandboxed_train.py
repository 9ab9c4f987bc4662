"""``sandboxed-train``: runs on a node agent for one job (ARCHITECTURE step 4).

fetch inputs (hash-checked) → train in the sandbox with the node's limits, relaying bridge progress to the
Prefect log and the coordinator → sign the completion proof → upload outputs → submit the proof.
The job token arrives in the environment from the worker (never in parameters, SPEC B1).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from agents.progress import ProgressRelay
from tasks.node import (
    DATASET_FILE,
    JOB_FILE,
    NodeIdentity,
    TrainingRun,
    sign_completion_proof,
    train_in_sandbox,
)
from tasks.node import write_inputs as _write_inputs

_MAX_SOCKET_PATH = 100


def _channel() -> Any:
    from agents.node_client import CoordinatorChannel

    return CoordinatorChannel.from_env()


# No Prefect retries on the tasks that call the control plane: the channel retries each call across a
# coordinator or gateway restart and never a refusal (agents.node_client, cyxwiz.retry; issue 21).
@task(name="fetch-inputs")
def fetch_inputs(job_id: str, job: dict[str, Any], directory: str) -> str:
    channel = _channel()
    dataset = channel.fetch_input(job_id, DATASET_FILE, sha256=job["dataset"]["sha256"])
    return str(_write_inputs(Path(directory), job=job, dataset=dataset))


@task(name="train-in-sandbox")
def train(job_id: str, inputs: str, workdir: str, trainer: str) -> TrainingRun:
    logger = get_run_logger()
    channel = _channel()
    backend = os.environ.get("CYXWIZ_SANDBOX_BACKEND", "bubblewrap")
    memory_mb = int(os.environ.get("CYXWIZ_SANDBOX_MEMORY_MB", "2048"))
    wall = float(os.environ.get("CYXWIZ_SANDBOX_WALL_SECONDS", "600"))
    # A sync call returns the id (the declared type also allows a coroutine).
    progress_id: UUID = create_progress_artifact(
        progress=0.0, key=f"training-{job_id}", description="Training"
    )  # type: ignore[assignment]
    curve: list[tuple[int, float]] = []

    def relay(message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "progress" and message.get("total"):
            fraction = 100.0 * float(message["step"]) / float(message["total"])
            update_progress_artifact(artifact_id=progress_id, progress=fraction)
            logger.info("job %s: step %s/%s", job_id, message["step"], message["total"])
        elif kind == "metrics":
            values = message.get("values") or {}
            if "train_loss" in values:
                curve.append((int(message.get("step", 0)), float(values["train_loss"])))
            logger.info("job %s: metrics %s", job_id, values)
        if kind == "progress":
            # Sent on the relay's own thread: a restarting coordinator never stalls the job (issue 21).
            progress.offer(message)

    with ProgressRelay(send=lambda message: channel.report_progress(job_id, message)) as progress:
        run = train_in_sandbox(
            inputs=Path(inputs), workdir=Path(workdir), backend=backend, memory_mb=memory_mb,
            wall_seconds=wall, trainer=trainer, on_message=relay,
        )  # fmt: skip
    update_progress_artifact(artifact_id=progress_id, progress=100.0)
    if curve:
        rows = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in curve)
        create_markdown_artifact(
            key=f"training-curve-{job_id}",
            markdown=f"# Training loss, job `{job_id}`\n\n| step | train loss |\n|---|---|\n{rows}\n",
            description="Training loss per checkpoint segment",
        )
    return run


@task(name="sign-completion-proof")
def sign(job: dict[str, Any], run: TrainingRun, identity: NodeIdentity) -> bytes:
    import jwt

    token = os.environ.get("CYXWIZ_JOB_TOKEN", "")
    # The jti binds the proof to the token the coordinator minted; the signature was checked by whoever
    # issued it to us, we only read the claim.
    jti = str(jwt.decode(token, options={"verify_signature": False}).get("jti", "")) if token else "none"
    return sign_completion_proof(job=job, run=run, identity=identity, token_jti=jti)


@task(name="upload-outputs")
def upload(job_id: str, run: TrainingRun) -> list[str]:
    channel = _channel()
    names = sorted(str(p.relative_to(run.output_dir)) for p in run.output_dir.rglob("*") if p.is_file())
    for name in names:
        channel.upload_output(job_id, name, run.output_dir / name)
    return names


@task(name="submit-proof")
def submit(job_id: str, proof: bytes) -> None:
    _channel().submit_proof(job_id, proof)


@flow(name="sandboxed-train", log_prints=False)
def sandboxed_train(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """Train one job on this node and hand back evidence; the control plane decides what it is worth."""
    root = Path(os.environ.get("CYXWIZ_WORK_ROOT") or tempfile.gettempdir())
    jobdir = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=root))
    if len(os.fsencode(jobdir / "work" / "bridge" / "bridge.sock")) > _MAX_SOCKET_PATH:
        # AF_UNIX paths are short (108 bytes): a deep work root would make the bridge socket impossible.
        jobdir.rmdir()
        jobdir = Path(tempfile.mkdtemp(prefix="cyxw-"))
    # One identity for the whole run: the run is trained for its certificate's PeerID (from the node's own
    # certificate, never the job document) and signed with its key, even if the node renews meanwhile (F1).
    # If it did, the channel restates the proof under the current certificate, naming this PeerID as the
    # trainer and carrying the renewal links to the current key (agents.node_client.resigned; A7).
    identity = NodeIdentity.from_env(dict(os.environ))
    inputs = fetch_inputs(job_id, job, str(jobdir / "inputs"))
    run = train(job_id, inputs, str(jobdir / "work"), identity.peer_id())
    proof = sign(job, run, identity)
    outputs = upload(job_id, run)
    submit(job_id, proof)
    return {"job_id": job_id, "status": run.status, "outputs": outputs, "sandbox": run.summary}


__all__ = ["JOB_FILE", "sandboxed_train"]
