"""The control plane's verifier service process: the core service plus the job-verification hook.

``python -m tasks.verifier_service serve --config LEDGER.json --socket PATH`` (the embedded stack starts
it). The service runs the verification itself (the same checks as :func:`tasks.services.verify_job`) and
signs its own verdict, so the lifecycle process can neither forge a passing report nor release without
one (F1, threat I). It holds the verifier's escrow key and ``verifier`` certificate, not the
control plane's ledger key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cyxwiz._cli import new_app

app = new_app(help="The verifier service with the control plane's job verification.")

#: Checks whose failure, once the node's signature verified, proves the node lied (stake is slashed).
FRAUD_CHECKS = frozenset({"commitments", "endpoints", "claimed-metric", "holdout", "replay", "training"})


def verdict_of(report: dict[str, Any]) -> str:
    """``pass``; ``fraud`` when a signed proof's training claims fail; else ``fail`` (crash, timeout)."""
    checks = {c["name"]: bool(c["passed"]) for c in report.get("checks", [])}
    if report.get("passed") and checks and all(checks.values()):
        return "pass"
    if checks.get("signature") and any(not ok for name, ok in checks.items() if name in FRAUD_CHECKS):
        return "fraud"
    return "fail"


def verify_hook(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from tasks import services
    from tasks.control import JobRequest

    request = JobRequest(**body["request"])
    dispatched = body["dispatched"]
    assignment = dispatched.get("assignment") or {}
    report = services.verify_job(request=request, dispatched=dispatched)
    # "public-derived" tells the reader the verdict rests on the replay, not on holdout secrecy (F1).
    report.summary["holdout"] = dispatched.get("holdout_source", "public-derived")
    as_dict: dict[str, Any] = json.loads(report.to_json())  # non-finite floats as text: canonical JSON
    bound = (body.get("node_peer_id"), body.get("node_wallet"), body.get("job_id"))
    if bound != (assignment.get("peer_id"), assignment.get("wallet"), request.job_id):
        return as_dict, "fail"  # the attestation would name another node or job than the one verified
    return as_dict, verdict_of(as_dict)


@app.callback()
def _group() -> None:
    """The verifier service with the control plane's job verification."""


@app.command("serve")
def serve_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ledger config JSON.")],
    socket: Annotated[Path | None, typer.Option("--socket", help="Unix socket path.")] = None,
    ready_file: Annotated[Path | None, typer.Option("--ready-file", help="Written once listening.")] = None,
) -> None:
    """Serve verification and co-signatures on a 0600 Unix socket until interrupted."""
    from cyxwiz.ledger.verifier_cli import run
    from tasks import services

    run(config, socket, ready_file, verify=verify_hook, audit=services.audit())


if __name__ == "__main__":
    app(prog_name="cyxwiz-verifier")
