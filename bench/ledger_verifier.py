"""The verifier service as ``bench_ledger_stack`` runs it: the core service, with a verification hook.

In the stack, the lifecycle asks the verifier service to verify a job (``POST /v1/verify``: the replay
runs there), and the service signs its verdict, records it in its own book and only then co-signs that
job's release. The bench times escrow pairs, not replays, so its hook passes every job it is asked
about; everything after the hook (the attestation signed with the service's ``verifier`` certificate,
the verdict recorded on disk before it leaves, the release co-signed under
:class:`~cyxwiz.ledger.cosign.VerifierPolicy`, each audited to the log ``CYXWIZ_AUDIT_DIR`` names) is the
service's own code, as in the stack.

Not for operators: it passes every job (``python -m bench.ledger_verifier serve -c ledger.json``).
"""

from __future__ import annotations

import os
from typing import Any

import typer

from cyxwiz.ledger.verifier_cli import ConfigOption, ReadyOption, SocketOption

app = typer.Typer(add_completion=False, no_args_is_help=True)


def passes(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A report that names the job it was asked about, and its verdict: pass."""
    return {"job_id": body["job_id"], "verdict": "pass", "checked": "bench: no replay"}, "pass"


@app.callback()
def _group() -> None:
    """The verifier service for the ledger benchmark (passes every job)."""


@app.command("serve")
def serve_command(config: ConfigOption, socket: SocketOption = None, ready_file: ReadyOption = None) -> None:
    """Serve verification (every job passes) and co-signatures on a 0600 Unix socket."""
    from cyxwiz.audit.log import AuditLog
    from cyxwiz.ledger.verifier_cli import run

    # its verdicts and co-signatures audited, as the stack's verifier service audits them
    run(
        config,
        socket,
        ready_file,
        verify=passes,
        audit=AuditLog.from_env() if os.environ.get("CYXWIZ_AUDIT_DIR") else None,
    )


if __name__ == "__main__":
    app(prog_name="bench-ledger-verifier")
