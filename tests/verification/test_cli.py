"""``cyxwiz verify-job``: prepare the reference job, run it, sign, check — and refuse tampering."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cyxwiz.cli import app
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.pki.peerid import peer_id
from cyxwiz.training.runtime import main as runtime_main

runner = CliRunner()


def test_prepare_run_sign_check(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1",))
    data = tmp_path / "data"
    result = runner.invoke(app, ["verify-job", "prepare-digits", str(data), "--job-id", "cli-job"])
    assert result.exit_code == 0, result.output
    job = json.loads((data / "job.json").read_text())
    job["training"]["hyperparameters"]["epochs"] = 4  # keep the test short
    (data / "job.json").write_text(json.dumps(job))
    out = tmp_path / "out"
    assert (
        runtime_main(
            [
                "--job",
                str(data / "job.json"),
                "--data",
                str(data / "digits-train.npz"),
                "--output",
                str(out),
                "--trainer",
                peer_id(load_certificate(pki.node_cert("node-1"))),
            ]  # the signer's run (issue 17)
        )
        == 0
    )
    started = "2026-01-01T00:00:00+00:00"
    proof = tmp_path / "proof.json"
    sign = [
        "verify-job",
        "sign",
        "--job",
        str(data / "job.json"),
        "--outputs",
        str(out),
        "--cert",
        str(pki.node_cert("node-1")),
        "--key",
        str(pki.node_key("node-1")),
        "--jti",
        "jti-9",
        "--started",
        started,
        "--out",
        str(proof),
    ]
    result = runner.invoke(app, sign)
    assert result.exit_code == 0, result.output
    check = [
        "verify-job",
        "check",
        "--proof",
        str(proof),
        "--cert",
        str(pki.node_cert("node-1")),
        "--job",
        str(data / "job.json"),
        "--outputs",
        str(out),
        "--train",
        str(data / "digits-train.npz"),
        "--holdout",
        str(data / "digits-holdout.npz"),
        "--bundle",
        str(pki.bundle),
        "--crl",
        str(pki.crl),
        "--jti",
        "jti-9",
        "--json",
        str(tmp_path / "report.json"),
        "--markdown",
        str(tmp_path / "report.md"),
    ]
    result = runner.invoke(app, check)
    assert result.exit_code == 0, result.output
    assert "**PASS**" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True

    (out / "metrics.json").write_text(json.dumps({"final": {"val_accuracy": 0.9999}}))
    runner.invoke(app, sign)
    result = runner.invoke(app, check)
    assert result.exit_code == 1
    assert "claimed-metric" in result.stderr and "claimed val_accuracy 0.9999" in result.stderr


def test_bad_proof_file_is_one_error_line(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1",))
    (tmp_path / "proof.json").write_text("{}")
    (tmp_path / "job.json").write_text("{}")
    (tmp_path / "x.npz").write_bytes(b"")
    result = runner.invoke(
        app,
        [
            "verify-job",
            "check",
            "--proof",
            str(tmp_path / "proof.json"),
            "--cert",
            str(pki.node_cert("node-1")),
            "--job",
            str(tmp_path / "job.json"),
            "--outputs",
            str(tmp_path),
            "--train",
            str(tmp_path / "x.npz"),
            "--holdout",
            str(tmp_path / "x.npz"),
            "--bundle",
            str(pki.bundle),
        ],
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_check_model(tmp_path: Path) -> None:
    model = {
        "input_shape": [64],
        "layers": [
            {"name": "fc", "type": "Linear", "out_features": 10},
            {"name": "loop", "type": "ReLU", "inputs": ["loop"]},
        ],
    }
    (tmp_path / "m.json").write_text(json.dumps(model))
    result = runner.invoke(app, ["verify-job", "check-model", str(tmp_path / "m.json")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: layers[1].inputs: circular dependency")
    model["layers"].pop()
    (tmp_path / "m.json").write_text(json.dumps(model))
    result = runner.invoke(app, ["verify-job", "check-model", str(tmp_path / "m.json")])
    assert result.exit_code == 0 and "parameters 650" in result.output


def test_plan_states_the_detection_and_refuses_a_strict_small_job(tmp_path: Path) -> None:
    from tests.training.conftest import training_doc

    doc = training_doc()
    (tmp_path / "job.json").write_text(json.dumps(doc))
    result = runner.invoke(app, ["verify-job", "plan", "--job", str(tmp_path / "job.json"), "--rows", "1438"])
    assert result.exit_code == 0, result.output
    assert "too small" in result.output and "P(detect" in result.output
    doc["verification"] = {"strict": True}
    (tmp_path / "job.json").write_text(json.dumps(doc))
    result = runner.invoke(app, ["verify-job", "plan", "--job", str(tmp_path / "job.json"), "--rows", "1438"])
    assert result.exit_code != 0 and "verification.target_fraction" in result.output
    assert "Traceback" not in result.output
