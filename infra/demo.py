"""``make demo`` / ``cyxwiz demo``: one real job through every part, on the embedded defaults.

PKI → Prefect server → ledger service (LiteSVM) → coordinator (mTLS) → node agent → escrow locked →
dispatched → sandboxed training with progress → verification (holdout, replay) → escrow released →
archived → audit chain verified. Leaves the Prefect UI up with ``--keep`` until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()

REFERENCE_JOB: dict[str, Any] = {
    "user": "demo-user",
    "payment": 5_000_000,
    "dataset": "sklearn:digits",
    "job_type": "model",
    "model": {
        "input_shape": [64],
        "layers": [
            {"name": "fc1", "type": "Linear", "out_features": 64},
            {"name": "act1", "type": "ReLU"},
            {"name": "fc2", "type": "Linear", "out_features": 10},
        ],
    },
    "training": {
        "seed": 7,
        "checkpoint_every": 20,
        "hyperparameters": {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 64, "epochs": 4},
    },
    "task": {"num_classes": 10, "threshold": 0.85},
    "limits": {"memory_mb": 2048, "wall_seconds": 300},
}


def say(message: str) -> None:
    console.print(f"[green]✓[/green] {message}")


def _show_balances(title: str, balances: dict[str, int]) -> None:
    table = Table(title=title)
    table.add_column("wallet")
    table.add_column("balance (base units)", justify="right")
    for name, value in balances.items():
        # "user" and "node" repeat user:demo-user and node:node-1 for older callers: each wallet once.
        if ":" in name:
            table.add_row(name, f"{value:,}")
    console.print(table)


def _show_hsm_keys(keys: Any) -> None:
    if keys is None:
        return
    table = Table(title="Keys inside the SoftHSM2 token (generated there, never extractable)")
    table.add_column("key")
    table.add_column("pkcs11: URI", overflow="fold")
    for name, uri in keys.summary():
        table.add_row(name, uri)
    console.print(table)


def _say_settlement(settlement: dict[str, Any]) -> None:
    say(f"escrow {settlement['state']}")
    if settlement.get("report_sha256"):
        say(
            "release co-signed by the verifier service (coordinator + verifier of the 2-of-3 multisig), "
            f"tx {settlement['settle_signature']}"
        )
        say(f"settlement memo on chain: {settlement.get('memo')} (report SHA-256, audit leaf of the verdict)")


def _use_blocks(stack: Any) -> None:
    """From here on this demo's flows (in-process and on the control worker) load their control-plane
    parts from the saved ``default`` ControlPlaneBlock, not from env vars."""
    from tasks import services

    stack.env["CYXWIZ_CONTROL_PLANE_BLOCK"] = os.environ["CYXWIZ_CONTROL_PLANE_BLOCK"] = "default"
    services.reset()
    say(
        "Control-plane configuration saved as the Prefect block cyxwiz-control-plane/default (paths and "
        "URLs only: the ledger passphrase and store master key stay in the control worker's environment)"
    )


def run_demo(workdir: Path, *, keep: bool, hsm: bool = False) -> int:
    from infra.stack import embedded_stack

    started = time.monotonic()
    console.rule("[bold]cyxwiz demo: one job, end to end, on the embedded defaults")
    home = workdir.resolve()
    if home.exists():
        shutil.rmtree(home)  # a fresh ledger, store and audit log each run; the demo is idempotent
    with embedded_stack(home, say=say, hsm=hsm, deploy_all=keep) as stack:
        _show_hsm_keys(stack.hsm)
        from cyxwiz.pki.certs import load_certificate, load_certificates, load_crls
        from cyxwiz.pki.verify import verify_certificate

        chain = verify_certificate(
            load_certificate(stack.pki.node_cert("node-1")),
            trusted=load_certificates(stack.pki.bundle),
            intermediates=load_certificates(stack.pki.ca_cert),
            crls=load_crls(stack.pki.crl),
            purpose="client",
        )
        say(f"node-1 certificate verified: chain of {len(chain)}, not revoked (CRL checked)")
        _use_blocks(stack)
        stack.start_agent("node-1")
        stack.wait_for_node("node-1")
        say("node agent node-1 registered over mTLS (identity = certificate PeerID) and heartbeating")
        before = stack.balances()
        _show_balances("Balances before", before)

        from flows.job_lifecycle import job_lifecycle

        console.rule("[bold]Submitting the reference job (MLP on scikit-learn digits)")
        # The user's own client signs the escrow lock with the user's wallet; the flow only sends it.
        summary = job_lifecycle(stack.fund(dict(REFERENCE_JOB)), node="node-1")
        verification = summary["verification"]
        escrow = summary["escrow"]
        say(f"escrow locked: {escrow['amount']:,} base units in {escrow['escrow_account']}")
        say(f"dispatched to {summary['node']}; node run {summary['node_run']['state']}")
        verdict = "PASS" if verification["passed"] else "FAIL"
        say(
            f"verification {verdict}: holdout accuracy {verification.get('holdout_accuracy')}, "
            f"replay {verification.get('segments_replayed')}/{verification.get('segments_total')} segments"
        )
        _say_settlement(summary["settlement"])
        after = stack.balances()
        _show_balances("Balances after", after)
        table = Table(title="Archived objects")
        table.add_column("key")
        for key in summary["archived"]:
            table.add_row(key)
        console.print(table)

        audit_ok = _audit_summary(stack)
        console.rule(f"[bold]done in {time.monotonic() - started:.0f} s")
        console.print(f"Prefect UI: {stack.prefect.ui_url} (flow runs, logs, verification report artifacts)")
        ok = verification["passed"] and audit_ok and after["node"] > before["node"]
        if keep:
            _keep_entry_points(stack)
            console.print("Services stay up; press Ctrl-C to stop them.")
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
        return 0 if ok else 1


def _keep_entry_points(stack: Any) -> None:
    """All three Prefect entry points against this stack: every deployment of prefect.yaml is deployed and
    a control worker runs them (job-lifecycle from the UI's form, the maintenance schedules), and
    ``job_lifecycle(spec)`` from Python with this stack's config."""
    stack.start_control_worker()
    say("Control worker on the control pool: job-lifecycle and the scheduled maintenance flows run there")
    env_file = write_user_env(stack)
    console.print(
        f"Prefect UI: {stack.prefect.ui_url}/deployments — run job-lifecycle from its parameter form (a spec "
        "without funding: the run waits await_funding_s for the owner's `cyxwiz job fund JOB`); "
        f"escrow-sweep fires every 5 min. The demo user's shell: `. {env_file}` (see README). "
        f"From Python: PREFECT_API_URL={stack.prefect.api_url} CYXWIZ_CONTROL_PLANE_BLOCK=default, "
        "then job_lifecycle(spec)."
    )


#: What the demo user's shell needs for ``cyxwiz job`` and ``prefect deployment run`` against a kept demo.
USER_ENV_FILE = "user.env"


def write_user_env(stack: Any) -> Path:
    """``<workdir>/user.env`` (0600): exports naming the demo user's certificate, key, wallet and its
    passphrase file, the coordinator and the Prefect API — file paths, never a secret's value — so the
    README's commands run as written against the kept stack (its ports change every run)."""
    import shlex

    wallet = stack.wallet("demo-user")
    values = {
        "CYXWIZ_COORDINATOR_URL": stack.coordinator.url,
        "CYXWIZ_CA_BUNDLE": stack.pki.bundle,
        "CYXWIZ_CRL": stack.pki.crl,
        "CYXWIZ_USER_CERT": stack.pki.user_cert,
        "CYXWIZ_USER_KEY": stack.pki.user_key,
        "CYXWIZ_WALLET": wallet.path,
        "CYXWIZ_WALLET_PASSPHRASE_FILE": Path(wallet.path).parent / "wallet.pass",
        "PREFECT_API_URL": stack.prefect.api_url,
    }
    lines = ["# cyxwiz demo --keep: the demo user's shell (. this file); valid while that demo runs"]
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in values.items()]
    path = Path(stack.home) / USER_ENV_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _audit_summary(stack: Any) -> bool:
    """Anchor the audit log's checkpoint on the ledger, then verify everything (issue 19)."""
    from solders.pubkey import Pubkey

    from cyxwiz.audit.anchor import verify_with_anchors
    from cyxwiz.audit.digest import load_signing_key
    from flows.maintenance import audit_anchor

    audit_anchor()  # what the hourly audit-anchor flow does: the checkpoint root goes on chain
    # Verified in place: with --keep the services go on writing audit records, so the log stays open.
    with stack.audit.writes_paused():
        report = verify_with_anchors(
            stack.home / "audit",
            public_key=load_signing_key(stack.env["CYXWIZ_AUDIT_SIGNING_KEY"]).public_key(),
            anchor_key=Pubkey.from_string(stack.env["CYXWIZ_AUDIT_ANCHOR_PUBKEY"]),
            rpc_url=stack.ledger.config.rpc_url,
        )
    checkpoint = report.checkpoint or {}
    say(f"audit checkpoint (C2SP signed note): size {checkpoint.get('size')}, root {checkpoint.get('root')}")
    say(f"anchored checkpoints on the ledger: {report.anchors_checked}")
    verdict = "OK" if report.ok else f"BROKEN: {report.first}"
    say(f"audit verify: {verdict} (pinned key; signed checkpoints, Merkle tree and ledger anchors checked)")
    return report.ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    parser.add_argument("--keep", action="store_true", help="keep the services (and the Prefect UI) up")
    parser.add_argument("--hsm", action="store_true", help="CA, token, audit and escrow keys in SoftHSM2")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    try:
        return run_demo(args.workdir, keep=args.keep, hsm=args.hsm)
    except KeyboardInterrupt:
        console.print("interrupted; stopped every service the demo started")
        return 130


if __name__ == "__main__":
    sys.exit(main())
