"""Refereed delegation on the trusted side (issue 20, ``verification.mode: redundant``; SPEC F1, threat I).

The verifier service calls :func:`referee_checks` for each of the two nodes of a redundant job, beside
that node's own full verification. It first checks that the two jobs really are one redundant pair (the
same training document down to the per-job secret only the control plane drew, the same owner, two
different nodes by PeerID), reads both nodes' signed evidence itself (proof signature under each node's
certificate, every artifact re-hashed against its proof, D3), then lets
:func:`cyxwiz.verification.referee.referee` bisect the two commitment chains and replay the one segment
that decides. A node the referee names as deviating fails the ``referee`` check (a ``fraud`` verdict: its
escrow is refunded and its stake slashed); a failed pairing is a plain failure, never a fraud.
Plain functions over the core (no Prefect).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyxwiz.errors import CyxwizError
from cyxwiz.verification.report import Check
from tasks.control import JobRequest

PAIRING = "pairing"
REFEREE = "referee"


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """A training document without what differs between the two shares (job id, input location)."""
    copy: dict[str, Any] = json.loads(json.dumps(doc))
    copy["job_id"] = None
    copy["dataset"]["uri"] = None
    return copy


def pairing_problem(
    request: JobRequest, dispatched: dict[str, Any], partner: JobRequest, partner_dispatched: dict[str, Any]
) -> str | None:
    """Why these two jobs are not one redundant pair, or None; read from the coordinator, not the caller."""
    from tasks import services
    from tasks.verifier_service import assigned

    ours, theirs = dispatched.get("training_doc") or {}, partner_dispatched.get("training_doc") or {}
    secret = (ours.get("training") or {}).get("job_secret")
    if not secret or comparable(ours) != comparable(theirs):
        return "the two jobs do not share one bound training document"
    if {request.job_id, partner.job_id} != {ours.get("job_id"), theirs.get("job_id")}:
        return "the training documents name other jobs"
    control = services.control_channel()
    owners = {control.job(request.job_id).get("user_id"), control.job(partner.job_id).get("user_id")}
    if owners != {request.user}:
        return "the two jobs belong to different users"
    node, partner_node = assigned(request.job_id), assigned(partner.job_id)
    if (
        node is None
        or partner_node is None
        or node.node_id == partner_node.node_id
        or node.peer_ids & partner_node.peer_ids
    ):
        return "the two jobs were not assigned to two different nodes"
    if partner_dispatched.get("assignment", {}).get("peer_id") not in partner_node.peer_ids:
        return "the second node's assignment is not the coordinator's"
    return None


@dataclass(frozen=True, kw_only=True)
class NodeEvidence:
    """A node's signed outputs, fetched and re-hashed, the PeerID of the key that signed them and the
    PeerID their run was trained for: the signer's, or a key that renewed into it by renewal links each
    signed by the older key. The run is rebuilt for that trainer, never for the assignment's PeerID nor
    on the coordinator's word about which keys are the node's (F1, A5, A7)."""

    output_dir: Path
    signer: str
    trainer: str


def _evidence(job_id: str, peer: str, into: Path) -> tuple[NodeEvidence | None, str | None]:
    """(the node's evidence, None) with its signed outputs fetched and re-hashed, or (None, why not)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from cyxwiz.hashing import file_sha256
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.storage import layout
    from cyxwiz.verification.proof import SignedProof, verify_proof_signature
    from cyxwiz.verification.renewal_links import check_chain
    from tasks import services

    control = services.control_channel()
    record = control.job(job_id)
    if not record.get("proof"):
        return None, f"no completion proof (status {record.get('status')})"
    try:
        signed = SignedProof.from_json(json.dumps(record["proof"]))
        # The certificate the proof was signed with, from the coordinator's records of the assigned node
        # (it may have renewed since dispatch); the node's own verification judged its chain.
        cert, peers = services.node_certificate(record.get("node_id"), signed.proof.node_peer_id)
        key = cert.public_key() if cert is not None and peer in peers else None
        if not isinstance(key, Ed25519PublicKey):
            return None, "the proof is signed by no Ed25519 certificate of the assigned node"
        verify_proof_signature(signed, key)
        if signed.proof.job_id != job_id:
            return None, "the proof names another job or node"
        signer, trainer = peer_id(key), signed.proof.trainer()
        check_chain(trainer, signer, (*signed.proof.renewal_links, *services.node_renewal_links(peers)))
        store = services.store()
        for name, digest in signed.proof.artifacts.items():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(layout.job_output(job_id, name), target)
            if digest is not None and file_sha256(target) != digest:
                return None, f"{name} differs from the proof"
    except (CyxwizError, ValueError, KeyError) as exc:
        return None, f"unusable evidence: {exc}"
    return NodeEvidence(output_dir=into, signer=signer, trainer=trainer), None


def referee_checks(
    *, request: JobRequest, dispatched: dict[str, Any], partner: dict[str, Any]
) -> list[Check]:
    """The ``pairing`` and ``referee`` checks of one node of a redundant job (see the module doc)."""
    from cyxwiz.training.data import load_dataset
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.commitments import read_commitments
    from cyxwiz.verification.referee import Trace, referee
    from tasks import services

    other = JobRequest(**partner["request"])
    other_dispatched: dict[str, Any] = partner["dispatched"]
    problem = pairing_problem(request, dispatched, other, other_dispatched)
    if problem is not None:
        return [Check(PAIRING, False, problem)]
    peer = str(dispatched["assignment"]["peer_id"])
    other_peer = str(other_dispatched["assignment"]["peer_id"])
    paired = Check(PAIRING, True, f"one bound job on two nodes: {request.job_id} and {other.job_id}")
    with tempfile.TemporaryDirectory() as tmp:
        ours, why = _evidence(request.job_id, peer, Path(tmp) / "a")
        if ours is None:
            return [paired, Check(REFEREE, False, f"this node's evidence: {why}")]
        theirs, why = _evidence(other.job_id, other_peer, Path(tmp) / "b")
        if theirs is None:
            reason = f"the other node's evidence is unusable ({why}): this node's own checks decide"
            return [paired, Check(REFEREE, True, reason, {"compared": False})]
        job = parse_training_job(dispatched["training_doc"], allow_file_uris=True)
        assert job.model is not None  # redundant mode is refused for script jobs at submission
        train = Path(tmp) / "train.npz"
        services.store().get_file(dispatched["dataset_key"], train)
        data = load_dataset(
            train, sha256=job.dataset.sha256, input_shape=job.model.input_shape,
            input_dtype=job.model.input_dtype, num_classes=job.task.num_classes,
        )  # fmt: skip
        try:
            verdict = referee(
                job,
                data,
                Trace(
                    node=peer,
                    trainer=ours.trainer,
                    output_dir=ours.output_dir,
                    commitments=read_commitments(ours.output_dir / "commitments.json"),
                ),
                Trace(
                    node=other_peer,
                    trainer=theirs.trainer,
                    output_dir=theirs.output_dir,
                    commitments=read_commitments(theirs.output_dir / "commitments.json"),
                ),
            )
        except CyxwizError as exc:
            # Not the node's fault as far as anyone can tell: a failure, never a fraud verdict.
            return [paired, Check("referee-error", False, f"the referee could not compare: {exc}")]
    details = {
        "compared": True, "agreed": verdict.agreed, "first_difference": verdict.first_difference,
        "segment": list(verdict.segment) if verdict.segment else None, "probes": verdict.probes,
        "honest": list(verdict.honest), "deviators": list(verdict.deviators), "other_job": other.job_id,
    }  # fmt: skip
    return [paired, Check(REFEREE, peer in verdict.honest, verdict.reason, details)]
