"""The redundant-mode attack's node flow (issue 20, SPEC F1, threat "malicious node"): test code only.

Deployed by the test alone (``deploy_one``, never in prefect.yaml), so no production agent can run it. On
the node named :data:`DISHONEST_NODE` it trains honestly and then forges the second half of the run: every
checkpoint from the middle on is nudged, then re-hashed, re-chained, the delivered model taken from the
forged last checkpoint and the claimed metrics restated honestly for it; the proof is signed with the
node's real certified key. Every other node runs the honest steps. Only training checks can tell, and
the referee, which bisects to the first forged segment and replays it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.sandboxed_train import fetch_inputs, sign, submit, train, upload
from tasks.node import DATASET_FILE, JOB_FILE, NodeIdentity, TrainingRun

#: The node (certificate CN) that cheats; the other node of the redundant pair is honest.
DISHONEST_NODE = "node-2"
NUDGE = 1e-3


def forge_second_half(out: Path, inputs: Path, trainer: str) -> int:
    """Nudge every checkpoint from the middle one on and make all hashes consistent; returns the first
    forged step."""
    from cyxwiz.verification.commitments import COMMITMENTS_FILE, read_commitments
    from tests._forgery import rechain

    old = read_commitments(out / COMMITMENTS_FILE)
    start = old[len(old) // 2].step

    def nudge(step: int, tensors: dict[str, Any]) -> dict[str, Any] | None:
        if step < start:
            return None
        name = next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].is_floating_point())
        tensors[name] = tensors[name] + NUDGE
        return tensors

    rechain(out, nudge)
    _restate_metrics(out, inputs, trainer)
    return start


def _restate_metrics(out: Path, inputs: Path, trainer: str) -> None:
    """A careful cheat claims exactly what its delivered model scores."""
    from safetensors.torch import load_file

    from cyxwiz.training import engine
    from cyxwiz.training.data import load_dataset
    from cyxwiz.training.spec import parse_training_job

    job = parse_training_job((inputs / JOB_FILE).read_text(encoding="utf-8"), allow_file_uris=True)
    assert job.model is not None
    data = load_dataset(
        inputs / DATASET_FILE, sha256=None, input_shape=job.model.input_shape,
        input_dtype=job.model.input_dtype, num_classes=job.task.num_classes,
    )  # fmt: skip
    state = engine.new_state(job, data, trainer=trainer)
    state.model.load_state_dict(load_file(str(out / "model.safetensors")))
    doc = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    doc["final"]["val_accuracy"] = engine.evaluate(state.model, state.validation)["accuracy"]
    (out / "metrics.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")


@task(name="forge-second-half")
def forge(run: TrainingRun, inputs: str) -> TrainingRun:
    if os.environ.get("CYXWIZ_NODE_NAME") == DISHONEST_NODE:
        forge_second_half(run.output_dir, Path(inputs), run.trainer)
    return run


@flow(name="sandboxed-train", log_prints=False)
def sandboxed_train(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    root = Path(os.environ.get("CYXWIZ_WORK_ROOT") or tempfile.gettempdir())
    jobdir = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=root))
    identity = NodeIdentity.from_env(dict(os.environ))
    inputs = fetch_inputs(job_id, job, str(jobdir / "inputs"))
    run = forge(train(job_id, inputs, str(jobdir / "work"), identity.peer_id()), inputs)
    proof = sign(job, run, identity)  # the node's real certified key: the signature is valid
    outputs = upload(job_id, run)
    submit(job_id, proof)
    return {"job_id": job_id, "status": run.status, "outputs": outputs, "sandbox": run.summary}
