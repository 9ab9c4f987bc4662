"""End to end: the runtime trains the reference MLP on digits inside the bubblewrap sandbox, its
commitments arrive over the job bridge, the node signs a proof, and the verifier passes it (issue 7;
SPEC E1, E4, F1). The same outputs with one inflated metric fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cyxwiz.errors import SandboxUnavailableError
from cyxwiz.sandbox import JobLimits, run_sandboxed
from tests.verification.conftest import World, reference_job

pytestmark = pytest.mark.slow


def test_reference_job_trains_in_the_sandbox_and_verifies(world: World, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "job.json").write_text(json.dumps(reference_job(world.digits)))
    shutil.copy(world.digits.train, inputs / "dataset.npz")
    argv = [
        "python",
        "-m",
        "cyxwiz.training.runtime",
        "--job",
        "/input/job.json",
        "--data",
        "/input/dataset.npz",
        "--output",
        "/output",
        "--trainer",
        world.peer(),  # node-1, which signs below (issue 17)
    ]
    limits = JobLimits(memory_bytes=2 << 30, cpu_cores=2, wall_seconds=240, output_bytes=200 << 20)
    try:
        result = run_sandboxed(argv=argv, workdir=tmp_path / "job", limits=limits, inputs=inputs)
    except SandboxUnavailableError as exc:  # pragma: no cover - CI hosts have bubblewrap
        pytest.fail(f"bubblewrap must run here: {exc}")
    assert result.ok, (result.reason, result.stderr_tail[-2000:])
    assert not result.bridge_errors

    kinds = [m["kind"] for m in result.messages]
    assert kinds[0] == "hello" and "progress" in kinds and "metrics" in kinds
    sent = [(m["step"], m["weights_sha256"]) for m in result.messages if m["kind"] == "checkpoint"]
    committed = json.loads((result.output_dir / "commitments.json").read_text())
    assert sent == [(c["step"], c["weights_sha256"]) for c in committed]
    # Same seed, same spec: the sandboxed run commits exactly the checkpoints of the in-process run.
    assert committed == json.loads((world.honest_out / "commitments.json").read_text())

    report = world.verify(result.output_dir, world.sign(result.output_dir))
    assert report.passed, report.to_markdown()
    assert report.summary["holdout_accuracy"] >= 0.9

    metrics = result.output_dir / "metrics.json"
    doc = json.loads(metrics.read_text())
    doc["final"]["val_accuracy"] = 0.9999  # no accuracy of a split under 10,000 samples: always a lie
    metrics.write_text(json.dumps(doc))
    assert not world.verify(result.output_dir, world.sign(result.output_dir)).check("claimed-metric").passed
