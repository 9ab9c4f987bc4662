"""``cyxwiz verify-job``: prepare the reference job, sign a completion proof, verify a finished job."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cyxwiz._cli import new_app
from cyxwiz.errors import ValidationError
from cyxwiz.verification.reference import reference_job_document

app = new_app(help="Completion proofs and result verification (holdout, replay spot check) of training jobs.")


def _file(flag: str, text: str) -> Any:
    return typer.Option(flag, exists=True, dir_okay=False, readable=True, help=text)


def _dir(flag: str, text: str) -> Any:
    return typer.Option(flag, exists=True, file_okay=False, help=text)


JobOpt = Annotated[Path, _file("--job", "The job's training document (job.json) from the signed spec.")]
OutputsOpt = Annotated[Path, _dir("--outputs", "The node's output directory (/output of the run).")]
CertOpt = Annotated[Path, _file("--cert", "The node certificate (PEM).")]


@app.command("prepare-digits")
def prepare_digits_cmd(
    directory: Annotated[Path, typer.Argument(help="Where to write digits-train/-holdout.npz and job.json.")],
    *,
    job_id: Annotated[str, typer.Option("--job-id", help="Job id of the written job.json.")] = "demo-job",
    seed: Annotated[int, typer.Option("--seed", help="Training seed of the written job.json.")] = 7,
) -> None:
    """Split scikit-learn's digits into a training file (for the node) and a holdout (for the verifier)."""
    from cyxwiz.training.data import prepare_digits
    from cyxwiz.training.spec import parse_training_job

    files = prepare_digits(directory)
    doc = reference_job_document(job_id=job_id, train=files.train, train_sha256=files.train_sha256, seed=seed)
    parse_training_job(doc, allow_file_uris=True)
    (directory / "job.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    typer.echo(f"train    {files.train}  sha256 {files.train_sha256}")
    typer.echo(f"holdout  {files.holdout}  sha256 {files.holdout_sha256}")
    typer.echo(f"job      {directory / 'job.json'}")


@app.command("check-model")
def check_model_cmd(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Model definition (JSON).")],
) -> None:
    """Validate a model definition (JSON) and print its layers, shapes and parameter count (G2)."""
    from cyxwiz.training.spec import parse_model_definition

    summary = parse_model_definition(path.read_bytes()).summary()
    for name in summary.order:
        typer.echo(f"{name:<20} {list(summary.shapes[name])!s:<20} {summary.parameters_by_layer[name]:>12}")
    typer.echo(f"parameters {summary.parameter_count}; output {summary.output} {list(summary.output_shape)}")


@app.command("plan")
def plan_cmd(
    *,
    job: JobOpt,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows of the training file the node gets.")],
) -> None:
    """The job's verification plan: segments, replays, detection probability; refuses a strict spec whose
    target cannot fit its budget (F1)."""
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.sampling import plan_for_job, total_steps

    spec = parse_training_job(job.read_bytes(), allow_file_uris=True)
    plan = plan_for_job(spec, train_rows=rows)
    v = spec.verification
    typer.echo(f"steps {total_steps(spec, train_rows=rows)}; segments {plan.segments}; mode {v.mode}")
    target = f"{v.target_fraction:.2%} faked at {v.confidence:.0%}"
    typer.echo(f"target {target} within {v.budget:.0%} of the training work")
    typer.echo(plan.describe())


def _time(text: str, option: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("not an ISO 8601 time", field=option) from None
    if moment.tzinfo is None:
        raise ValidationError("give a timezone (e.g. 2026-01-01T12:00:00+00:00)", field=option)
    return moment


@app.command("sign")
def sign_cmd(
    *,
    job: JobOpt,
    outputs: OutputsOpt,
    cert: CertOpt,
    key: Annotated[Path, _file("--key", "The node's private key (PKCS#8 PEM, 0600).")],
    jti: Annotated[str, typer.Option("--jti", help="The job token's jti.")],
    started: Annotated[str, typer.Option("--started", help="ISO 8601 start time with timezone.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the signed proof (JSON).")],
    finished: Annotated[str, typer.Option("--finished", help="ISO 8601 end time; default now.")] = "",
) -> None:
    """Node side: build the completion proof over an output directory and sign it with the node key."""
    from cyxwiz.pki.certs import fingerprint_sha256, load_certificate
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.proof import build_proof, sign_proof

    spec = parse_training_job(job.read_bytes(), allow_file_uris=True)
    certificate = load_certificate(cert)
    proof = build_proof(
        job_id=spec.job_id,
        job_spec_sha256=spec.sha256(),
        output_dir=outputs,
        node_peer_id=peer_id(certificate),
        cert_fingerprint_sha256=fingerprint_sha256(certificate).hex(),
        token_jti=jti,
        started_at=_time(started, "started"),
        finished_at=_time(finished, "finished") if finished else dt.datetime.now(dt.UTC),
    )
    signed = sign_proof(proof, load_private_key(key))
    out.write_bytes(signed.to_json())
    typer.echo(f"proof {out} sha256 {signed.sha256()} ({len(proof.artifacts)} artifacts)")


@app.command("check")
def check_cmd(
    *,
    proof: Annotated[Path, _file("--proof", "The signed completion proof (JSON).")],
    cert: CertOpt,
    job: JobOpt,
    outputs: OutputsOpt,
    train: Annotated[Path, _file("--train", "Trusted copy of the training file.")],
    holdout: Annotated[Path, _file("--holdout", "Holdout the node never received.")],
    bundle: Annotated[Path, _file("--bundle", "CA bundle (PEM).")],
    crl: Annotated[list[Path] | None, _file("--crl", "CRL file (repeatable).")] = None,
    node: Annotated[str, typer.Option("--node", help="PeerID the job was assigned to.")] = "",
    jti: Annotated[str, typer.Option("--jti", help="jti of the job token minted for this run.")] = "",
    segments: Annotated[
        int,
        typer.Option(
            "--segments",
            min=0,
            help="Segments to replay (0: the job's verification target within its budget).",
        ),
    ] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write the report as Markdown here.")
    ] = None,
) -> None:
    """Trusted side: verify a finished job; exit 0 when every check passes, 1 when one fails."""
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.proof import SignedProof
    from cyxwiz.verification.replay import ReplayPolicy
    from cyxwiz.verification.verifier import Expectations, JobData, TrustStore, verify_job

    report = verify_job(
        proof=SignedProof.from_file(proof),
        node_certificate=load_certificate(cert),
        job=parse_training_job(job.read_bytes(), allow_file_uris=True),
        output_dir=outputs,
        data=JobData(train=train, holdout=holdout),
        trust=TrustStore.from_files(bundle, crls=crl or ()),
        expect=Expectations(node_peer_id=node or None, token_jti=jti or None),
        policy=ReplayPolicy(segments=segments or None),
    )
    if json_out:
        json_out.write_text(report.to_json(), encoding="utf-8")
    if markdown_out:
        markdown_out.write_text(report.to_markdown(), encoding="utf-8")
    typer.echo(report.to_markdown())
    if not report.passed:
        typer.echo("error: verification failed: " + "; ".join(report.reasons()), err=True)
        raise typer.Exit(1)
