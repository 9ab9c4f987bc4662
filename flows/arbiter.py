"""``resolve-dispute``: the arbiter decides a dispute filed in a job's window (issue 20; SPEC F1, H2).

Load the dispute (its funds in the dispute escrow), replay the segment its evidence names from the node's
committed checkpoints with the verifier's replay, settle with the arbiter's key (upheld: refund and slash;
rejected: release to the node), and publish the decision as a markdown artifact. Each decision and each
refusal is an audit event. Run it on the arbiter's control worker with ``CYXWIZ_ARBITER_PASSPHRASE``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from cyxwiz.verification.dispute import Resolution
from tasks import arbiter


@task(name="load-dispute")
def load_dispute(job_id: str) -> arbiter.Case:
    return arbiter.load_case(job_id)


@task(name="replay-evidence")
def replay_evidence(case: arbiter.Case) -> Resolution:
    return arbiter.decide(case)


@task(name="settle-dispute")
def settle_dispute(case: arbiter.Case, resolution: Resolution) -> dict[str, Any]:
    return arbiter.settle(case, resolution)


@flow(name="resolve-dispute")
def resolve_dispute(job_id: str) -> dict[str, Any]:
    """Decide and settle the dispute filed against ``job_id``'s release."""
    case = load_dispute(job_id)
    resolution = replay_evidence(case)
    decision = settle_dispute(case, resolution)
    get_run_logger().info(
        "dispute of %s %s: %s", job_id, "upheld" if decision["upheld"] else "rejected", decision["reason"]
    )
    create_markdown_artifact(
        key=f"dispute-{job_id}",
        markdown=arbiter.to_markdown(decision),
        description=f"The arbiter's decision on the dispute of {job_id}",
    )
    return decision
