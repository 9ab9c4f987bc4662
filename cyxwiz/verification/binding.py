"""The per-job secret that binds a run to its job (issue 20, SPEC F1, threat "malicious node").

The control plane draws it from the OS CSPRNG after it assigned the node and adds it to the training
document the node receives; :func:`cyxwiz.training.engine.run_seed` mixes it into every seed. So a trace
computed before the assignment, or for another job with the same public spec, starts from other weights
and walks another data order: the verifier's endpoint and data-order checks refuse it. The secret is a
binding nonce, not a credential: it is worthless after its job, and it travels only to the assigned node
and the verifier (it is redacted from audit records by its ``*_secret`` name).
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
