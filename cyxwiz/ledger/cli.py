"""``cyxwiz escrow``: inspect escrows, hold them in dispute, resolve disputes (admin), reconcile crashes.

The ledger config comes from ``--config`` or ``CYXWIZ_LEDGER_CONFIG``; key passphrases from
``CYXWIZ_LEDGER_PASSPHRASE`` (only the commands that sign need it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyxwiz._cli import new_app

if TYPE_CHECKING:
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.records import EscrowRecord

app = new_app(help="Escrow on Solana: status, list, dispute, resolve-dispute (admin), reconcile.")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Ledger config JSON (default: $CYXWIZ_LEDGER_CONFIG).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _config(path: Path | None) -> LedgerConfig:
    from cyxwiz.ledger.config import LedgerConfig

    return LedgerConfig.from_file(path) if path is not None else LedgerConfig.from_env()


def _print(records: list[EscrowRecord], as_json: bool, *, single: bool = False) -> None:
    if as_json:
        payload: Any = records[0].to_dict() if single else [r.to_dict() for r in records]
        typer.echo(json.dumps(payload, indent=2))
        return
    if not records:
        typer.echo("no escrows")
        return
    for r in records:
        node = r.node_wallet or "-"
        typer.echo(f"{r.job_id:<24} {r.state.value:<10} {r.amount:>16} node={node}")
        if single:
            for key in ("escrow_account", "user_wallet", "proof_ref", "dispute_reason", "resolution"):
                typer.echo(f"  {key}: {getattr(r, key) or '-'}")
            typer.echo(f"  create_signature: {r.create_signature or '-'}")
            typer.echo(f"  settle_signature: {r.settle_signature or '-'}")


def _store_ledger(config: LedgerConfig) -> Any:
    """Read-only view (no keys, no RPC): the store alone answers status and list."""
    from cyxwiz.ledger.store import EscrowStore

    return EscrowStore.open(config.db_url)


@app.command("status")
def status_command(job_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show one job's escrow.  Example: cyxwiz escrow status job-42 --json"""
    from cyxwiz.ledger.records import EscrowRecord, check_job_id

    store = _store_ledger(_config(config))
    _print([EscrowRecord.from_row(store.get(check_job_id(job_id)))], as_json, single=True)


@app.command("list")
def list_command(
    config: ConfigOption = None,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="Only these states (repeatable): locked, disputed, ..."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List escrows.  Example: cyxwiz escrow list --state disputed"""
    from cyxwiz.errors import ValidationError
    from cyxwiz.ledger.records import EscrowRecord
    from cyxwiz.ledger.store import EscrowState

    try:
        states = [EscrowState(s) for s in state] if state else None
    except ValueError:
        allowed = ", ".join(s.value for s in EscrowState)
        raise ValidationError(f"unknown state; one of: {allowed}", field="state") from None
    store = _store_ledger(_config(config))
    _print([EscrowRecord.from_row(r) for r in store.list_escrows(states=states)], as_json)


@app.command("dispute")
def dispute_command(
    job_id: str,
    reason: Annotated[str, typer.Option("--reason", help="Why the escrow is held (shown to the arbiter).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hold a locked escrow until an arbiter resolves it.

    Example: cyxwiz escrow dispute job-42 --reason 'metrics look fabricated'
    """
    from cyxwiz.ledger.config import open_ledger

    ledger = open_ledger(_config(config), roles=())
    _print([ledger.dispute(job_id=job_id, reason=reason)], as_json, single=True)


@app.command("resolve-dispute")
def resolve_command(  # noqa: PLR0917 - typer maps parameters to options by name
    job_id: str,
    to: Annotated[
        str, typer.Option("--to", help="'release' (pay the node) or 'refund' (return to the user).")
    ],
    node_wallet: Annotated[
        str | None, typer.Option("--node-wallet", help="Node wallet to pay (default: the assigned node).")
    ] = None,
    proof_ref: Annotated[
        str | None, typer.Option("--proof-ref", help="Reference to the evidence used.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Admin: settle a disputed escrow with the arbiter's and coordinator's signatures.

    Example: cyxwiz escrow resolve-dispute job-42 --to refund
    """
    from cyxwiz.errors import ValidationError
    from cyxwiz.ledger.config import open_ledger

    if to not in ("release", "refund"):
        raise ValidationError("must be 'release' or 'refund'", field="to", rule="F1")
    ledger = open_ledger(_config(config), roles=("arbiter", "coordinator"))
    record = ledger.resolve(
        job_id=job_id,
        outcome="release" if to == "release" else "refund",
        node_wallet=node_wallet,
        proof_ref=proof_ref,
    )
    _print([record], as_json, single=True)


@app.command("reconcile")
def reconcile_command(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Finish every escrow move a crash left in flight (idempotent; the sweep flow runs this).

    Example: cyxwiz escrow reconcile
    """
    from cyxwiz.ledger.config import open_ledger

    ledger = open_ledger(_config(config))
    _print(ledger.reconcile(), as_json)
