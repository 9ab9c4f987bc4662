"""The per-job secret and the trainer's PeerID that bind a run to its job and its node (issues 20, 17;
SPEC F1, A5, A7, threats "malicious node" and "payment fraud").

The control plane draws the secret from the OS CSPRNG after it assigned the node and adds it to the
training document the node receives; :func:`cyxwiz.training.engine.run_seed` mixes it into every seed. So a
trace computed before the assignment, or for another job with the same public spec, starts from other
weights and walks another data order: the verifier's endpoint and data-order checks refuse it. The secret
is a binding nonce, not a credential: it is worthless after its job, and it travels only to the assigned
node and the verifier (it is redacted from audit records by its ``*_secret`` name).

The secret binds the run to the job, not to the node: whoever draws it and writes the assignment (the
coordinator) could let an honest node H train, then rewrite the assignment to a colluding node C with a
genuine certificate; C re-signs H's outputs and is paid for H's work, since every check of the trace would
hold. So the run seed also mixes in the PeerID of the node that trains, and the trajectory belongs to the
key that signs its completion proof. Who names that PeerID is the point: the node takes it from its own
certificate (``tasks.node``: the flow run's one identity trains and signs), the verifier, replay, referee
and arbiter from the public key that signed the proof they judge — never from the assignment or the job
document, which that coordinator writes. C re-signing H's outputs then fails the data-order check (the
committed batch indices are H's order) and the endpoints (step 0 is H's initialisation); C training with
H's PeerID gains nothing either, since the verifier takes the PeerID from C's own signature.

A node renews its certificate at half-life under a new key (A7), so a job may outlive the certificate it
was trained for. The flow run signs with the key it trained under; the agent then restates the proof under
its current certificate (``agents.node_client.resigned``): the proof names the trainer's PeerID
(``trainer_peer_id``) and carries the renewal links from it to the signing key, each signed by the older
key (:mod:`cyxwiz.verification.renewal_links`, the document the payout follows). The verifier rebuilds the
run for that trainer only when those signatures lead from it to the signer (the ``trainer`` check): C
naming H as its trainer needs a link H's key signed — the coordinator's list of a node's PeerIDs is not
enough, and a forged link, a chain with a gap or another node's link is refused.

The PeerID mixes in only together with the secret. A run without a secret (``cyxwiz train`` locally, the
documented reproducible examples) has no signer and stays reproducible from the public seed alone; the
verifier refuses a model job without a secret (``Expectations.require_job_secret``), so no paid run is
unbound. The two shares of a redundant job (``verification.mode: redundant``) train one run with the
secret alone: the referee's bisection needs equal chains, and any work two nodes both do bit for bit can
be copied by either, so a pair member copying its partner is what redundancy cannot tell (the verifier
judges each share's signature, identity and outputs all the same).
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

from cyxwiz.errors import ValidationError

SECRET_BYTES = 32


def new_job_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


def bind_training_doc(training_doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``training_doc`` with a fresh per-job secret; refuses a document that already has one
    (a secret chosen by anyone but the control plane, after assignment, binds nothing)."""
    training = training_doc.get("training")
    if not isinstance(training, dict):
        raise ValidationError("the training document has no training section", field="training", rule="G1")
    if training.get("job_secret") is not None:
        raise ValidationError(
            "the per-job secret is set by the control plane after assignment, never by the submitter",
            field="training.job_secret",
            rule="F1",
        )
    bound = copy.deepcopy(training_doc)
    bound["training"]["job_secret"] = new_job_secret()
    return bound


def refuse_submitted_secret(training_doc: dict[str, Any]) -> None:
    """Submission-time rule: a user's spec may not carry the per-job secret (F1)."""
    training = training_doc.get("training")
    if isinstance(training, dict) and "job_secret" in training:
        raise ValidationError(
            "the per-job secret is set by the control plane after assignment, never by the submitter",
            field="training.job_secret",
            rule="F1",
        )
