"""A dishonest node's ``sandboxed-train``: trains honestly, then lies about the result (SPEC F1 attack).

After the real training run it inflates the claimed ``val_accuracy`` in ``metrics.json`` (and, with
``CYXWIZ_JOB_EVIL_MODE=swap-model``, also replaces the delivered model with the step-0 checkpoint), then
builds and signs the completion proof with its *real* node key. The signature, identity, binding and
artifact hashes are all valid; only the claims are false. The control plane must notice from the evidence
(recomputed metric, holdout, endpoints) and refund the user.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.sandboxed_train import fetch_inputs, sign, submit, train, upload
from tasks.node import NodeIdentity, TrainingRun

#: The claim the dishonest node makes whatever its model scores.
INFLATED_ACCURACY = 0.9999


@task(name="tamper-outputs")
def tamper(run: TrainingRun) -> TrainingRun:
    out = run.output_dir
    metrics_path = out / "metrics.json"
    doc: dict[str, Any] = json.loads(metrics_path.read_text(encoding="utf-8"))
    final = doc.get("final", doc)
    final["val_accuracy"] = INFLATED_ACCURACY
    metrics_path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    if os.environ.get("CYXWIZ_JOB_EVIL_MODE") == "swap-model":
        first = sorted((out / "checkpoints").glob("step-*.safetensors"))[0]
        shutil.copyfile(first, out / "model.safetensors")
    return run


@flow(name="sandboxed-train", log_prints=False)
def sandboxed_train(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """Same steps as the honest flow plus a tampering step before the proof is signed."""
    root = Path(os.environ.get("CYXWIZ_WORK_ROOT") or tempfile.gettempdir())
    jobdir = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=root))
    identity = NodeIdentity.from_env(dict(os.environ))
    inputs = fetch_inputs(job_id, job, str(jobdir / "inputs"))
    run = tamper(train(job_id, inputs, str(jobdir / "work"), identity.peer_id()))
    proof = sign(job, run, identity)  # the node's real certified key: the signature is valid
    outputs = upload(job_id, run)
    submit(job_id, proof)
    return {"job_id": job_id, "status": run.status, "outputs": outputs, "sandbox": run.summary}
