"""Node-side steps of ``sandboxed-train``: run the job in the sandbox, then sign the completion proof.

Plain functions over the core; :mod:`tasks.node_tasks` wraps them as Prefect tasks. They run on the node
(semi-trusted zone): nothing here decides payment, it only produces evidence the control plane checks.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyxwiz.errors import SandboxError, VerificationError

JOB_FILE = "job.json"
DATASET_FILE = "dataset.npz"


@dataclass(frozen=True, kw_only=True)
class NodeIdentity:
    """The node's certified key material, loaded under the PKI rules (key 0600, Ed25519)."""

    cert_path: Path
    key_path: Path

    @classmethod
    def from_env(cls, env: dict[str, str]) -> NodeIdentity:
        from cyxwiz.errors import ConfigError

        cert, key = env.get("CYXWIZ_NODE_CERT"), env.get("CYXWIZ_NODE_KEY")
        if not cert or not key:
            raise ConfigError("CYXWIZ_NODE_CERT and CYXWIZ_NODE_KEY must be set on a node", rule="A5")
        return cls(cert_path=Path(cert), key_path=Path(key))

    def peer_id(self) -> str:
        """The PeerID of this node's own certificate: the run is trained for it and signed with its key
        (never a PeerID from the job document, which the coordinator writes; F1, A5)."""
        from cyxwiz.pki.certs import load_certificate
        from cyxwiz.pki.peerid import peer_id

        return peer_id(load_certificate(self.cert_path))


def write_inputs(directory: Path, *, job: dict[str, Any], dataset: bytes) -> Path:
    """Lay out ``/input`` for the runtime: the signed training document and the (hash-checked) data."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / JOB_FILE).write_text(json.dumps(job, sort_keys=True), encoding="utf-8")
    (directory / DATASET_FILE).write_bytes(dataset)
    for path in directory.iterdir():
        path.chmod(0o644)  # the sandbox user (65534) reads them through a read-only bind
    directory.chmod(0o755)
    return directory


@dataclass(frozen=True, kw_only=True)
class TrainingRun:
    status: str
    reason: str
    output_dir: Path
    started_at: dt.datetime
    finished_at: dt.datetime
    #: The PeerID the run was trained for (its seed mixes it in): only that certificate's key may sign it.
    trainer: str
    messages: list[dict[str, Any]]
    summary: dict[str, Any]


def train_in_sandbox(
    *,
    inputs: Path,
    workdir: Path,
    backend: str,
    memory_mb: int,
    wall_seconds: float,
    trainer: str,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingRun:
    """Run the training runtime on the job's inputs inside the sandbox with the node's limits (E1–E3), for
    ``trainer``: the PeerID of the node's own certificate (:meth:`NodeIdentity.peer_id`)."""
    import cyxwiz
    from cyxwiz.sandbox import JobLimits, run_sandboxed

    limits = JobLimits(
        memory_bytes=memory_mb * 1024 * 1024,
        cpu_cores=2.0,
        gpu_memory_bytes=0,
        wall_seconds=wall_seconds,
        output_bytes=256 * 1024 * 1024,
    )
    started = dt.datetime.now(dt.UTC)
    result = run_sandboxed(
        argv=[
            sys.executable,
            "-m",
            "cyxwiz.training.runtime",
            "--job",
            f"/input/{JOB_FILE}",
            "--data",
            f"/input/{DATASET_FILE}",
            "--output",
            "/output",
            "--trainer",
            trainer,
        ],
        workdir=workdir,
        limits=limits,
        backend=backend,
        inputs=inputs,
        on_message=on_message,
        # The runtime is the node's own cyxwiz (the sandbox binds exactly that package dir read-only): name
        # its parent so an editable install elsewhere (a development worktree) resolves to the same code.
        env={"PYTHONPATH": str(Path(cyxwiz.__file__).resolve().parent.parent)},
    )
    finished = dt.datetime.now(dt.UTC)
    if not result.output_trusted:
        raise SandboxError(
            f"training did not finish cleanly: {result.status}: {result.reason or result.stderr_tail[-500:]}",
            rule="E2",
        )
    return TrainingRun(
        status=result.status,
        reason=result.reason,
        output_dir=result.output_dir,
        started_at=started,
        finished_at=finished,
        trainer=trainer,
        messages=list(result.messages),
        summary=result.summary(),
    )


def sign_completion_proof(
    *, job: dict[str, Any], run: TrainingRun, identity: NodeIdentity, token_jti: str
) -> bytes:
    """Build and sign the completion proof over the run's artifacts with the node's certified key (F1)."""
    from cyxwiz.pki.certs import fingerprint_sha256, load_certificate
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.proof import build_proof, sign_proof

    cert = load_certificate(identity.cert_path)
    if peer_id(cert) != run.trainer:
        # The run is bound to the key it was trained for: another key's proof fails the endpoints (F1).
        raise VerificationError(
            f"the run was trained for {run.trainer}; this certificate is {peer_id(cert)}",
            field="trainer",
            rule="F1",
        )
    key = load_private_key(identity.key_path)
    spec = parse_training_job(json.dumps(job), allow_file_uris=True)
    proof = build_proof(
        job_id=spec.job_id,
        job_spec_sha256=spec.sha256(),
        output_dir=run.output_dir,
        node_peer_id=peer_id(cert),
        cert_fingerprint_sha256=fingerprint_sha256(cert).hex(),
        token_jti=token_jti,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )
    return sign_proof(proof, key).to_json()
