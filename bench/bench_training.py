"""Verification cost ÷ training cost of the reference job (MLP on digits) at the default replay m.

Issue 7's reference figure (the digits job, 308 segments), now under issue 20's rules: the job's default
target (1 % faked at 99 %) within its 10 % budget, bit-for-bit replay. Both sides run in this process on the
same CPU; torch/sklearn imports and the dev PKI are set up before timing.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from pathlib import Path


def run() -> list[tuple[str, float, str]]:
    from cyxwiz.pki.certs import fingerprint_sha256, load_certificate, load_crls
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.training.data import prepare_digits
    from cyxwiz.training.runtime import RecordingReporter, run_training
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.proof import build_proof, sign_proof
    from cyxwiz.verification.reference import reference_job_document
    from cyxwiz.verification.replay import ReplayPolicy
    from cyxwiz.verification.verifier import Expectations, JobData, TrustStore, verify_job

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = build_dev_pki(root / "pki", nodes=("node-1",))
        files = prepare_digits(root / "data")
        doc = reference_job_document(job_id="bench", train=files.train, train_sha256=files.train_sha256)
        (root / "job.json").write_text(json.dumps(doc))
        job = parse_training_job(doc, allow_file_uris=True)

        # Best of a few runs on each side: the machine is shared, the minimum is the least disturbed.
        train_s = float("inf")
        for attempt in range(2):
            started = time.perf_counter()
            summary = run_training(
                root / "job.json",
                data_path=files.train,
                output_dir=root / f"out{attempt}",
                reporter=RecordingReporter(),
                trainer=peer_id(load_certificate(pki.node_cert("node-1"))),  # the signer's run (issue 17)
            )
            train_s = min(train_s, time.perf_counter() - started)

        cert = load_certificate(pki.node_cert("node-1"))
        now = dt.datetime.now(dt.UTC)
        proof = sign_proof(
            build_proof(
                job_id=job.job_id,
                job_spec_sha256=job.sha256(),
                output_dir=root / "out0",
                node_peer_id=peer_id(cert),
                cert_fingerprint_sha256=fingerprint_sha256(cert).hex(),
                token_jti="bench",
                started_at=now,
                finished_at=now,
            ),
            load_private_key(pki.node_key("node-1")),
        )
        trust = TrustStore(
            trusted=[load_certificate(pki.ca_cert), load_certificate(pki.root_ca_cert)],
            crls=load_crls(pki.crl),
        )
        verify_s = float("inf")
        for attempt in range(3):
            started = time.perf_counter()
            report = verify_job(
                proof=proof,
                node_certificate=cert,
                job=job,
                output_dir=root / "out0",
                data=JobData(train=files.train, holdout=files.holdout),
                trust=trust,
                expect=Expectations(node_peer_id=peer_id(cert), token_jti="bench"),
                policy=ReplayPolicy(sample_seed=attempt),
            )
            verify_s = min(verify_s, time.perf_counter() - started)
    if not report.passed:
        raise RuntimeError("the honest reference job failed verification: " + "; ".join(report.reasons()))
    m, segments = report.summary["segments_replayed"], report.summary["segments_total"]
    p = report.summary["detection_probability"]
    faked = report.check("replay").details["faked_segments_assumed"]
    holdout = report.summary["holdout_accuracy"]
    return [
        (
            "verify / train (reference MLP, default target)",
            verify_s / train_s,
            f"n={m} of {segments} segments, P(detect {faked} faked)={p:.3f} (bit-for-bit); "
            f"train {train_s:.2f} s "
            f"({summary.steps} steps), verify {verify_s:.2f} s, holdout acc {holdout:.3f}",
        ),
    ]


if __name__ == "__main__":
    for label, ratio, why in run():
        print(f"{label:<44} {ratio:8.3f}  {why}")
