"""A CUDA job inside the sandbox, replayed by the verifier's code (issue 20, "GPU path"; SPEC E1–E2, F1).

``python -m bench.gpu_sandbox OUTDIR`` trains the reference MLP on a synthetic 64-feature data set with
the project's own runtime (``python -m cyxwiz.training.runtime --device auto``: :mod:`cyxwiz.training.device`
picks CUDA when visible and applies the GPU memory cap) inside the bubblewrap sandbox, then replays every
committed segment with the verifier's primitives (:func:`~cyxwiz.verification.trace.read_checkpoint`,
:mod:`cyxwiz.training.engine`, :func:`~cyxwiz.verification.replay.compare_segment`) on the job's device and
on the CPU. ``OUTDIR/gpu_sandbox.json`` holds, per node→verifier pair, the bit-exact segment count (the
replayed checkpoint's SHA-256 equals the commitment) and the max/mean model and optimizer distances, plus
the tolerance :func:`~cyxwiz.verification.tolerance.tolerance_for` would apply. A CPU job replayed on the
CPU runs as the control (expected: every segment bit for bit). Without CUDA only the control runs.

Directories on ``PYTHONPATH`` (a carried site-packages, say) are bound read-only into the sandbox so the
job imports what the driver does. When the sandbox cannot run the job (or the job fails inside it), it
trains in-process instead and the JSON says ``"sandboxed": false`` with the reason and the job's stderr,
so a scarce GPU run still yields the replay figures.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cyxwiz
from cyxwiz.errors import CyxwizError, SandboxUnavailableError
from cyxwiz.hashing import file_sha256
from cyxwiz.pki.peerid import peer_id
from cyxwiz.sandbox import JobLimits, run_sandboxed
from cyxwiz.sandbox.policy import SandboxPolicy
from cyxwiz.training import engine
from cyxwiz.training.data import load_dataset
from cyxwiz.training.device import select_device
from cyxwiz.training.runtime import run_training
from cyxwiz.training.spec import TrainingJob, parse_training_job
from cyxwiz.verification.commitments import read_commitments
from cyxwiz.verification.reference import reference_job_document
from cyxwiz.verification.replay import compare_segment
from cyxwiz.verification.tolerance import Tolerance, tolerance_for
from cyxwiz.verification.trace import StateSchemas, read_checkpoint
from tasks.node import DATASET_FILE, JOB_FILE, write_inputs

Say = Callable[[str], None]
#: The bench node's PeerID (a key fixed by a label: no PKI here); the job is trained and replayed for it,
#: as a node trains for its certificate's PeerID and the verifier replays for the proof's signer (issue 17).
TRAINER = peer_id(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench.gpu_sandbox.node").digest()))
#: Distances only: the verdict is the SHA-256 comparison, counted separately.
_MEASURE = Tolerance(value=math.inf, exact=False, reason="measurement")


def make_inputs(directory: Path, *, rows: int, epochs: int, every: int) -> Path:
    """``/input`` for the runtime: a reference job over a seeded synthetic set (no scikit-learn needed)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 64)).astype(np.float32)
    y = ((x[:, :4].argmax(axis=1) + (x[:, 4] > 0)) % 10).astype(np.int64)
    scratch = directory.parent / "dataset.npz"
    with scratch.open("wb") as handle:
        np.savez(handle, X=x, y=y)
    doc = reference_job_document(
        job_id="gpu-sandbox", train=scratch, train_sha256=file_sha256(scratch), seed=7,
        job_secret=hashlib.sha256(b"bench.gpu_sandbox").hexdigest(), epochs=epochs, checkpoint_every=every,
    )  # fmt: skip
    return write_inputs(directory, job=doc, dataset=scratch.read_bytes())


def _search_path() -> tuple[str, list[Path]]:
    """PYTHONPATH for the job and the extra read-only binds it needs (the package dir is bound already)."""
    root = Path(cyxwiz.__file__).resolve().parent.parent
    extra = [Path(p).resolve() for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    extra = [p for p in dict.fromkeys(extra) if p.is_dir() and p != root]
    return os.pathsep.join(map(str, [root, *extra])), extra


def train_node(inputs: Path, work: Path, device: str, say: Say) -> dict[str, Any]:
    """Run the runtime in the bubblewrap sandbox; fall back to in-process training (recorded) if it can't."""
    cuda = device == "cuda"
    where = ["--job", f"/input/{JOB_FILE}", "--data", f"/input/{DATASET_FILE}", "--output", "/output",
             "--trainer", TRAINER]  # fmt: skip
    argv = [sys.executable, "-m", "cyxwiz.training.runtime", *where, "--device", "auto" if cuda else "cpu"]
    limits = JobLimits(
        memory_bytes=8 << 30, cpu_cores=2.0, gpus=1 if cuda else 0, gpu_memory_bytes=8 << 30,
        wall_seconds=300, output_bytes=256 << 20,
    )  # fmt: skip
    pythonpath, extra = _search_path()
    record: dict[str, Any] = {"backend": "bubblewrap", "sandboxed": False}
    started = time.perf_counter()
    for degraded in (False, True):  # a host without a delegated cgroup still runs, and the JSON says so
        policy = SandboxPolicy(extra_ro_paths=tuple(extra), allow_degraded=degraded)
        try:
            result = run_sandboxed(argv=argv, workdir=work / f"job-{device}-{int(degraded)}", limits=limits,
                                   inputs=inputs, env={"PYTHONPATH": pythonpath}, policy=policy)  # fmt: skip
        except SandboxUnavailableError as exc:
            record[f"unavailable{'_degraded' if degraded else ''}"] = str(exc)[:500]
            say(f"[{device}] sandbox unavailable (allow_degraded={degraded}): {exc}")
            continue
        record.update(sandboxed=True, allow_degraded=degraded, status=result.status, summary=result.summary())
        if result.output_trusted:
            record.update(output=str(result.output_dir), seconds=round(time.perf_counter() - started, 3))
            return record
        record.update(
            sandboxed=False, sandbox_error=f"{result.status}: {result.reason} {result.stderr_tail[-1500:]}"
        )
        say(f"[{device}] sandboxed job failed: {record['sandbox_error']}")
        break
    say(f"[{device}] training in-process instead (NOT sandboxed)")
    selection = select_device("auto" if cuda else "cpu", env={})
    out = work / f"inprocess-{device}"
    run_training(inputs / JOB_FILE, data_path=inputs / DATASET_FILE, output_dir=out, trainer=TRAINER,
                 device=selection.device, device_class=selection.device_class)  # fmt: skip
    record.update(output=str(out), seconds=round(time.perf_counter() - started, 3))
    return record


def replay(job: TrainingJob, inputs: Path, output: Path, verifier: str) -> dict[str, Any]:
    """Replay every committed segment on ``verifier`` the way the verifier does; count and measure."""
    data = load_dataset(inputs / DATASET_FILE, sha256=job.dataset.sha256, input_shape=job.model.input_shape,  # type: ignore[union-attr]
                        input_dtype=job.model.input_dtype, num_classes=job.task.num_classes)  # type: ignore[union-attr]  # fmt: skip
    commitments = read_commitments(output / "commitments.json")
    schemas = StateSchemas.of(job, data, trainer=TRAINER)
    state = engine.new_state(job, data, trainer=TRAINER, device=verifier)
    exact, model_d, optim_d, mismatched = 0, [], [], []
    for start, end in itertools.pairwise(commitments):
        before = read_checkpoint(output, start, schemas.at(start.step))
        engine.load_checkpoint(state, before)
        for step in range(start.step, end.step):
            engine.train_step(state, step)
        digest = hashlib.sha256(engine.checkpoint_bytes(state, step=end.step)).hexdigest()
        exact += digest == end.weights_sha256
        claimed = read_checkpoint(output, end, schemas.at(end.step))
        _, distances, what = compare_segment(engine.checkpoint_tensors(state), claimed, before, _MEASURE)
        if not distances:
            mismatched.append(f"{start.step}->{end.step}: {what}")
            continue
        model_d.append(distances["model"])
        optim_d.append(distances["optimizer"])
    n = max(1, len(model_d))
    return {
        "segments": len(commitments) - 1,
        "bit_exact_segments": exact,
        "model_max": max(model_d, default=math.nan),
        "model_mean": sum(model_d) / n,
        "optimizer_max": max(optim_d, default=math.nan),
        "optimizer_mean": sum(optim_d) / n,
        "structural_mismatches": mismatched[:5],
    }


def _tolerance(runtime: dict[str, Any], verifier_class: str) -> str:
    try:
        t = tolerance_for(node_class=str(runtime["device_class"]), node_torch=str(runtime["torch"]),
                          verifier_class=verifier_class, verifier_torch=torch.__version__,
                          dtype=str(runtime.get("dtype", "float32")))  # fmt: skip
    except CyxwizError as exc:
        return f"none: {exc}"
    return f"{'exact' if t.exact else t.value}: {t.reason}"


def run(outdir: Path, *, rows: int, epochs: int, every: int, say: Say) -> dict[str, Any]:
    engine.make_deterministic()
    cuda = torch.cuda.is_available()
    classes = {"cpu": "cpu"}
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cuda": cuda}
    if cuda:
        classes["cuda"] = select_device("cuda", env={}).device_class
        info.update(device=torch.cuda.get_device_name(0), device_class=classes["cuda"])
    else:
        info["note"] = "no CUDA device here: only the CPU job and its CPU→CPU replay ran"
    say(json.dumps(info))
    work = Path(tempfile.mkdtemp(prefix="cyxw-gs-"))  # short: the bridge socket path must fit AF_UNIX
    doc: dict[str, Any] = {"info": info, "nodes": {}}
    try:
        inputs = make_inputs(work / "inputs", rows=rows, epochs=epochs, every=every)
        job = parse_training_job((inputs / JOB_FILE).read_text(encoding="utf-8"), allow_file_uris=True)
        for node in ("cuda", "cpu") if cuda else ("cpu",):
            say(f"[{node}] training in the sandbox …")
            try:  # one failing node must not cost the other's figures (device time is scarce)
                record = train_node(inputs, work, node, say)
                if "output" in record:
                    output = Path(record.pop("output"))
                    record["runtime"] = json.loads((output / "runtime.json").read_text(encoding="utf-8"))
                    for verifier in ("cuda", "cpu") if node == "cuda" else ("cpu",):
                        say(f"[{node}] replaying on {verifier} …")
                        figures = replay(job, inputs, output, verifier)
                        figures["tolerance"] = _tolerance(record["runtime"], classes[verifier])
                        record[f"{node}->{verifier}"] = figures
                        say(f"[{node}->{verifier}] {json.dumps(figures)}")
            except Exception as exc:
                record = {"error": f"{type(exc).__name__}: {exc}"[:800]}
                say(f"[{node}] failed: {record['error']}")
            doc["nodes"][node] = record
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "gpu_sandbox.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    say(f"wrote {outdir / 'gpu_sandbox.json'}")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_sandbox", description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args(argv)
    run(args.outdir, rows=args.rows, epochs=args.epochs, every=args.every,
        say=functools.partial(print, flush=True))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
