"""The trusted-side verifier of a finished job (ARCHITECTURE step 5, SPEC F1, threat "malicious node").

:func:`verify_job` checks, in order: the node certificate (chains to the CA, not revoked when the proof
was received, client EKU), the proof signature by that certificate's Ed25519 key, the identity and
binding (assigned node, job id, spec hash, token jti), every artifact's SHA-256, and — for ``model``
jobs — the commitments, endpoints, the claimed metric (recomputed), the holdout the node never received,
and the replay spot check. Escrow is released only on a passing report.

The training checks rebuild the run for the PeerID it was trained for: the key that signed the proof, or
(a node that renewed its certificate during the job) the key the proof names as its trainer, when renewal
links each signed by the older key lead from it to the signing key (the ``trainer`` check,
:func:`~cyxwiz.verification.renewal_links.check_chain`, the rule the payout follows). Never the
assignment's or the job document's PeerID, and never the coordinator's list of the node's PeerIDs: a node
that signs another node's run fails the trainer check or the training checks
(:mod:`cyxwiz.verification.binding`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.errors import CertificateRevokedError, CyxwizError
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.proof import SignedProof, hash_artifacts, verify_proof_signature
from cyxwiz.verification.replay import ReplayPolicy
from cyxwiz.verification.report import Check, VerificationReport

#: A node's clock may run a little ahead of ours.
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class TrustStore:
    """The CA bundle and CRLs node certificates are checked against."""

    trusted: Sequence[x509.Certificate]
    intermediates: Sequence[x509.Certificate] = ()
    crls: Sequence[x509.CertificateRevocationList] = ()

    @classmethod
    def from_files(cls, bundle: Path, *, crls: Sequence[Path] = ()) -> TrustStore:
        from cyxwiz.pki.certs import load_certificates, load_crls

        return cls(trusted=load_certificates(bundle), crls=[c for p in crls for c in load_crls(p)])


@dataclass(frozen=True)
class Expectations:
    """What the coordinator knows independently of the node: the assignment and the token it minted."""

    node_peer_id: str | None = None
    #: Every PeerID of the assigned node (its certificates across renewals, from the coordinator's
    #: records): when given, the proof's certificate must be one of them (``node_peer_id`` is then unused).
    node_peer_ids: frozenset[str] = frozenset()
    token_jti: str | None = None
    #: Renewal links the coordinator holds for the node, besides those the proof carries: trusted only by
    #: their signatures (a link the trainer's key chain did not sign is never followed).
    renewal_links: tuple[object, ...] = ()
    #: When the trusted side received the proof (revocation is judged at this moment); default: now.
    received_at: dt.datetime | None = None
    #: A model job must carry the per-job secret the control plane added after assignment (issue 20):
    #: without it two jobs of one spec train the same run and one's trace passes for the other.
    require_job_secret: bool = True


@dataclass(frozen=True)
class JobData:
    """The trusted side's copies of the training file (for replay) and the holdout (never sent to a node)."""

    train: Path
    holdout: Path
    holdout_sha256: str | None = None


@dataclass
class _Run:
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)

    def add(self, check: Check) -> bool:
        self.checks.append(check)
        return check.passed


def _revoked_after(
    cert: x509.Certificate, crls: Sequence[x509.CertificateRevocationList], moment: dt.datetime
) -> dt.datetime | None:
    for crl in crls:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None and crl.issuer == cert.issuer and entry.revocation_date_utc > moment:
            return entry.revocation_date_utc
    return None


def check_certificate(cert: x509.Certificate, trust: TrustStore, received: dt.datetime) -> Check:
    from cyxwiz.pki.verify import verify_certificate

    try:
        verify_certificate(
            cert,
            trusted=trust.trusted,
            intermediates=trust.intermediates,
            crls=trust.crls,
            at=received,
            purpose="client",
        )
    except CertificateRevokedError as exc:
        later = _revoked_after(cert, trust.crls, received)
        if later is None:
            return Check("certificate", False, f"node certificate revoked: {exc.message}")
        # Revoked only after we received the proof: the proof was made while the key was still good.
        # The other chain rules were checked before revocation, so they hold.
        return Check("certificate", True, f"chains to the CA; revoked only later ({later.isoformat()})")
    except CyxwizError as exc:
        return Check("certificate", False, f"node certificate refused: {exc.message}")
    return Check("certificate", True, "chains to the CA, valid, not revoked, client usage")


def _identity(signed: SignedProof, cert: x509.Certificate, expect: Expectations) -> Check:
    from cyxwiz.pki.certs import fingerprint_sha256
    from cyxwiz.pki.peerid import peer_id

    proof = signed.proof
    cert_peer = peer_id(cert)
    if proof.node_peer_id != cert_peer:
        return Check(
            "identity", False, f"proof names node {proof.node_peer_id} but the certificate is {cert_peer}"
        )
    if proof.cert_fingerprint_sha256 != fingerprint_sha256(cert).hex():
        return Check("identity", False, "proof names another certificate fingerprint")
    trainer = proof.trainer()
    if expect.node_peer_ids:
        if cert_peer not in expect.node_peer_ids:
            return Check(
                "identity",
                False,
                f"proof comes from {cert_peer}, no certificate of the assigned node (signed by another node)",
            )
        if trainer not in expect.node_peer_ids:
            return Check(
                "identity",
                False,
                f"the proof's run was trained for {trainer}, no certificate of the assigned node",
            )
    elif expect.node_peer_id is not None and expect.node_peer_id not in (cert_peer, trainer):
        # A node that renewed during the job signs with its new key the run of the assigned one.
        return Check(
            "identity",
            False,
            f"job was assigned to {expect.node_peer_id}, proof comes from {cert_peer} "
            "(signed by another node)",
        )
    return Check("identity", True, f"node {cert_peer}")


def _trainer(signed: SignedProof, signer: str, expect: Expectations) -> Check:
    """The run belongs to the signing key: it was trained for it, or for a key that renewed into it by
    links each signed by the older key (carried by the proof, or held by the coordinator: their
    signatures decide, never who handed them over)."""
    from cyxwiz.verification.renewal_links import check_chain

    trainer = signed.proof.trainer()
    try:
        renewals = check_chain(trainer, signer, (*signed.proof.renewal_links, *expect.renewal_links))
    except CyxwizError as exc:
        return Check("trainer", False, f"the run was trained for another key: {exc.message}")
    if renewals == 0:
        return Check("trainer", True, f"trained for the signing key {signer}")
    return Check(
        "trainer",
        True,
        f"trained for {trainer}, which renewed into the signing key ({renewals} signed links)",
    )


def _binding(signed: SignedProof, job: TrainingJob, expect: Expectations, received: dt.datetime) -> Check:
    proof = signed.proof
    if proof.job_id != job.job_id:
        return Check(
            "binding", False, f"proof is for job {proof.job_id!r}, not {job.job_id!r} (replayed proof)"
        )
    if proof.job_spec_sha256 != job.sha256():
        return Check(
            "binding", False, "proof binds another job spec (seed, model or hyper-parameters changed)"
        )
    if expect.require_job_secret and job.job_type == "model" and job.training.job_secret is None:
        return Check(
            "binding",
            False,
            "the job spec carries no per-job secret (training.job_secret): its run is not bound to this job",
        )
    if expect.token_jti is not None and proof.token_jti != expect.token_jti:
        return Check("binding", False, "proof carries another job token id (replayed from an earlier run)")
    if not proof.started() <= proof.finished() <= received + CLOCK_SKEW:
        return Check("binding", False, "proof start/end times are out of order or in the future")
    return Check("binding", True, "job id, spec hash, token jti and times match")


def _is_checkpoint(name: str) -> bool:
    from cyxwiz.training.runtime import CHECKPOINT_DIR

    return name.startswith(f"{CHECKPOINT_DIR}/")


def _artifacts(signed: SignedProof, output_dir: Path, *, job_type: str) -> Check:
    # Checkpoints of a model job are hashed when the training checks read them (each one read is checked
    # against its commitment, D3): hashing thousands the replay never opens would cost as much as the
    # replay itself, and an unread checkpoint influences nothing the verifier accepts.
    lazy = _is_checkpoint if job_type == "model" else None
    try:
        actual = hash_artifacts(output_dir, skip=lazy)
    except CyxwizError as exc:
        return Check("artifacts", False, f"outputs unreadable: {exc}")
    claimed = signed.proof.artifacts
    missing = sorted(set(claimed) - set(actual))
    extra = sorted(set(actual) - set(claimed))
    changed = sorted(
        n for n in set(claimed) & set(actual) if actual[n] is not None and claimed[n] != actual[n]
    )
    if missing or extra or changed:
        return Check(
            "artifacts",
            False,
            f"artifacts differ from the proof: changed {changed[:3]}, missing "
            f"{missing[:3]}, unlisted {extra[:3]}",
            {"changed": changed, "missing": missing, "extra": extra},
        )
    hashed = sum(1 for v in actual.values() if v is not None)
    return Check(
        "artifacts",
        True,
        f"{len(actual)} artifacts listed; {hashed} match their SHA-256, checkpoints are checked as read",
    )


def _runtime_declaration(output_dir: Path) -> dict[str, str]:
    import json

    from cyxwiz.errors import VerificationError
    from cyxwiz.training.runtime import RUNTIME_FILE

    try:
        doc = json.loads((output_dir / RUNTIME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"{RUNTIME_FILE} is unreadable: {exc}", path=RUNTIME_FILE) from None
    fields = ("device_class", "dtype", "torch")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in fields):
        raise VerificationError(f"{RUNTIME_FILE} must name {', '.join(fields)}", path=RUNTIME_FILE)
    return {k: doc[k] for k in fields}


def _training(
    run: _Run,
    *,
    signed: SignedProof,
    trainer: str,
    job: TrainingJob,
    output_dir: Path,
    data: JobData,
    policy: ReplayPolicy,
) -> None:
    import torch

    from cyxwiz.training import engine
    from cyxwiz.training.data import load_dataset
    from cyxwiz.training.runtime import segment_length
    from cyxwiz.verification import replay, trace
    from cyxwiz.verification.commitments import read_commitments
    from cyxwiz.verification.sampling import plan_sampling
    from cyxwiz.verification.tolerance import Tolerance, tolerance_for

    assert job.model is not None
    missing = replay.missing_required(signed.proof)
    if missing:
        run.add(Check("commitments", False, f"required outputs missing: {', '.join(missing)}"))
        return
    engine.make_deterministic()
    shape = {
        "input_shape": job.model.input_shape,
        "input_dtype": job.model.input_dtype,
        "num_classes": job.task.num_classes,
    }
    train = load_dataset(data.train, sha256=job.dataset.sha256, **shape)  # type: ignore[arg-type]
    holdout = load_dataset(data.holdout, sha256=data.holdout_sha256, **shape)  # type: ignore[arg-type]
    commitments = read_commitments(output_dir / "commitments.json")
    state = engine.new_state(job, train, trainer=trainer)
    started = time.perf_counter()
    total = state.order.total_steps
    every = segment_length(job, total)
    trace_ok = run.add(trace.check_commitments(state.order, every, signed.proof, commitments))
    schemas = trace.StateSchemas.of(job, train, trainer=trainer)
    if trace_ok:
        trace_ok = run.add(
            trace.check_endpoints(job, train, output_dir, commitments, schemas, trainer=trainer)
        )
    try:
        declared = _runtime_declaration(output_dir)
        tolerance: Tolerance | CyxwizError = tolerance_for(
            node_class=declared["device_class"],
            node_torch=declared["torch"],
            verifier_class="cpu",
            verifier_torch=torch.__version__,
            dtype=declared["dtype"],
        )
    except CyxwizError as exc:
        tolerance = exc
    # Exact only when the node ran this backend class; an undeclared or uncalibrated one gets the
    # cross-backend slack here and fails the replay below.
    exact = isinstance(tolerance, Tolerance) and tolerance.exact
    try:
        for check in replay.check_metrics(
            job, train, holdout, output_dir, signed.proof, trainer=trainer, exact=exact
        ):
            run.add(check)
    except CyxwizError as exc:
        run.add(Check("claimed-metric", False, f"the delivered model cannot be evaluated: {exc.message}"))
    if not trace_ok:
        run.add(Check("replay", False, "not run: the commitment trace is not sound"))
    else:
        v = job.verification
        plan = plan_sampling(
            len(commitments) - 1,
            target_fraction=v.target_fraction,
            confidence=v.confidence,
            budget=v.budget,
            samples=policy.segments,
        )
        if isinstance(tolerance, CyxwizError):
            run.add(Check("replay", False, f"no tolerance for this node's backend: {tolerance.message}"))
        else:
            run.add(
                replay.check_replay(
                    job,
                    train,
                    output_dir,
                    commitments,
                    policy=policy,
                    plan=plan,
                    tolerance=tolerance,
                    schemas=schemas,
                    trainer=trainer,
                )
            )
    run.summary["training_checks_seconds"] = round(time.perf_counter() - started, 3)


def verify_job(
    *,
    proof: SignedProof,
    node_certificate: x509.Certificate,
    job: TrainingJob,
    output_dir: Path,
    data: JobData,
    trust: TrustStore,
    expect: Expectations | None = None,
    policy: ReplayPolicy | None = None,
) -> VerificationReport:
    """Verify a finished job; the report passes only if every check passes (never raises for a bad node)."""
    expect = expect or Expectations()
    received = expect.received_at or dt.datetime.now(dt.UTC)
    run = _Run()
    identity_ok = run.add(check_certificate(node_certificate, trust, received))
    public = node_certificate.public_key()
    if isinstance(public, Ed25519PublicKey):
        try:
            verify_proof_signature(proof, public)
            run.add(Check("signature", True, "Ed25519 signature by the node certificate's key"))
        except CyxwizError as exc:
            identity_ok = run.add(Check("signature", False, exc.message))
    else:
        identity_ok = run.add(Check("signature", False, "node certificate key is not Ed25519"))
    identity_ok = run.add(_identity(proof, node_certificate, expect)) and identity_ok
    from cyxwiz.pki.peerid import peer_id

    identity_ok = run.add(_trainer(proof, peer_id(node_certificate), expect)) and identity_ok
    identity_ok = run.add(_binding(proof, job, expect, received)) and identity_ok
    artifacts_ok = run.add(_artifacts(proof, output_dir, job_type=job.job_type))
    if job.job_type == "script":
        run.add(Check("training", True, "script job: no replayable trace; identity and artifacts only"))
    elif identity_ok and artifacts_ok:
        try:
            # The run is rebuilt for the key it was trained for: the signer's, or one that renewed into
            # the signer's by signed links (the trainer check just held; F1, A5, A7).
            _training(
                run,
                signed=proof,
                trainer=proof.proof.trainer(),
                job=job,
                output_dir=output_dir,
                data=data,
                policy=policy or ReplayPolicy(),
            )
        except CyxwizError as exc:
            run.add(Check("training", False, f"training outputs refused: {exc}"))
    else:
        run.add(Check("training", False, "not run: the proof or its artifacts are not trustworthy"))
    for check in run.checks:
        if check.name == "holdout":
            run.summary["holdout_accuracy"] = check.details.get("holdout_accuracy")
        if check.name == "replay":
            for key in (
                "segments_replayed",
                "segments_total",
                "detection_probability",
                "target_met",
                "tolerance",
                "tolerance_reason",
            ):
                run.summary[key] = check.details.get(key)
    run.summary["claimed_metrics"] = dict(proof.proof.metrics)
    return VerificationReport(
        job_id=job.job_id, checks=tuple(run.checks), proof_sha256=proof.sha256(), summary=run.summary
    )
