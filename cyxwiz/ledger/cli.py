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

app = new_app(
    help="Escrow on Solana: status, list, dispute, resolve-dispute (admin), reconcile; node stake, unstake."
)

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
def status_command(
    job_id: Annotated[str | None, typer.Argument(help="The job whose escrow to show.")] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="Show this node's stake instead (its PeerID).")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one job's escrow, or a node's stake.

    Example: cyxwiz escrow status job-42 --json;  cyxwiz escrow status --node 12D3KooW...
    """
    from cyxwiz.errors import ValidationError
    from cyxwiz.ledger.records import EscrowRecord, check_job_id

    store = _store_ledger(_config(config))
    if node is not None:
        from cyxwiz.ledger.stake import StakeBook

        _print_stake(StakeBook(store._engine).get(node).to_dict(), as_json)
        return
    if job_id is None:
        raise ValidationError("name a job, or --node PEER_ID for a stake", field="job_id")
    _print([EscrowRecord.from_row(store.get(check_job_id(job_id)))], as_json, single=True)


def _print_stake(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        typer.echo(f"{key}: {value if value is not None else '-'}")


def _stakes(config: Path | None, roles: tuple[str, ...] = ("coordinator",)) -> Any:
    from cyxwiz.ledger.config import open_ledger
    from cyxwiz.ledger.stake import StakeLedger

    loaded = _config(config)
    return StakeLedger(ledger=open_ledger(loaded, roles=roles), policy=loaded.stake_policy())


@app.command("stake")
def stake_command(
    peer_id: Annotated[str, typer.Option("--node", help="The node's certificate PeerID.")],
    amount: Annotated[int, typer.Option("--amount", help="Base units to lock in the node's stake.")],
    node_key: Annotated[
        Path, typer.Option("--node-key", help="The node wallet's sealed key file (it signs the deposit).")
    ],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lock tokens from the node's wallet in its stake account (2-of-3 authority): the node signs.

    Example: cyxwiz escrow stake --node 12D3KooW... --amount 5000000 --node-key keys/node.key
    """
    from cyxwiz.ledger.keystore import load_keypair, passphrase_from_env

    node = load_keypair(node_key, passphrase=passphrase_from_env())
    _print_stake(_stakes(config).stake(peer_id=peer_id, node=node, amount=amount).to_dict(), as_json)


@app.command("unstake")
def unstake_command(
    peer_id: Annotated[str, typer.Option("--node", help="The node's certificate PeerID.")],
    withdraw: Annotated[
        bool, typer.Option("--withdraw", help="Withdraw now (after the cool-down, no job running).")
    ] = False,
    withdrawal: Annotated[
        Path | None,
        typer.Option(
            "--withdrawal",
            help="The node's signed withdrawal (cyxwiz escrow sign-withdrawal): starts the verifier's "
            "cool-down too; with --withdraw, the one that pays.",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start the stake's cool-down (no more dispatch), or --withdraw it back to the wallet the node's key
    named in its signed withdrawal (never a wallet the stake book says).

    Example: cyxwiz escrow unstake --node 12D3KooW... --withdrawal withdrawal.json;  later, with a new one:
    cyxwiz escrow unstake --node 12D3KooW... --withdraw --withdrawal withdrawal.json
    """
    from cyxwiz.errors import ValidationError
    from cyxwiz.pki._files import read_bytes

    signed = None
    if withdrawal is not None:
        signed = read_bytes(withdrawal, what="signed withdrawal").decode("utf-8", errors="replace").strip()
    if not withdraw:  # with the node's signed withdrawal, the verifier's cool-down starts now too
        _print_stake(_stakes(config).request_unstake(peer_id=peer_id, withdrawal=signed).to_dict(), as_json)
        return
    if signed is None:
        raise ValidationError(
            "a withdrawal pays only the wallet the node's key signed: pass --withdrawal FILE",
            field="withdrawal", rule="F1", hint="on the node: cyxwiz escrow sign-withdrawal --wallet W",
        )  # fmt: skip
    _print_stake(_stakes(config).withdraw(peer_id=peer_id, withdrawal=signed).to_dict(), as_json)


@app.command("sign-withdrawal")
def sign_withdrawal_command(
    wallet: Annotated[str, typer.Option("--wallet", help="The wallet (public key) the stake goes back to.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", help="The node's certificate key (default: $CYXWIZ_NODE_KEY)."),
    ] = None,
    stake_peer: Annotated[
        str | None,
        typer.Option("--stake-peer", help="The PeerID the stake was deposited under, if an earlier key's."),
    ] = None,
    cert: Annotated[
        list[Path] | None,
        typer.Option(
            "--cert",
            help="The key's certificate, presented to the verifier (default: $CYXWIZ_NODE_CERT); a renewed "
            "key: then again with the staking key's certificate.",
        ),
    ] = None,
) -> None:
    """On the node: sign the request that its stake go back to WALLET (valid for an hour, used once).

    Example: cyxwiz escrow sign-withdrawal --wallet 7xKX... > withdrawal.json
    """
    import os

    from cyxwiz.errors import ConfigError
    from cyxwiz.ledger.withdrawal import SignedStakeWithdrawal
    from cyxwiz.pki._files import read_bytes
    from cyxwiz.pki.keys import load_private_key

    path = key or (Path(os.environ["CYXWIZ_NODE_KEY"]) if os.environ.get("CYXWIZ_NODE_KEY") else None)
    if path is None:
        raise ConfigError("name the node's key: --key or CYXWIZ_NODE_KEY", field="key", rule="A5")
    paths = cert or ([Path(os.environ["CYXWIZ_NODE_CERT"])] if os.environ.get("CYXWIZ_NODE_CERT") else [])
    if not paths:  # the verifier refuses a key it cannot check against the CRL (A6)
        raise ConfigError("name the key's certificate: --cert or CYXWIZ_NODE_CERT", field="cert", rule="A6")
    pem = "".join(read_bytes(p, what="node certificate").decode("utf-8", errors="replace") for p in paths)
    signed = SignedStakeWithdrawal.sign(
        key=load_private_key(path), wallet=wallet, stake_peer_id=stake_peer, certificate=pem
    )
    typer.echo(signed.to_json())


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
    """Move a locked escrow's funds into its dispute escrow: only the arbiter (with the verifier) can
    settle it from there, on chain. Needs the control plane's key and the verifier service.

    Example: cyxwiz escrow dispute job-42 --reason 'metrics look fabricated'
    """
    from cyxwiz.ledger.config import open_ledger

    ledger = open_ledger(_config(config), roles=("coordinator",))
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
    """Admin: settle a disputed escrow with the arbiter's key (CYXWIZ_ARBITER_PASSPHRASE) and the
    verifier service's co-signature.

    Example: cyxwiz escrow resolve-dispute job-42 --to refund
    """
    from cyxwiz.errors import ValidationError
    from cyxwiz.ledger.config import open_ledger

    if to not in ("release", "refund"):
        raise ValidationError("must be 'release' or 'refund'", field="to", rule="F1")
    ledger = open_ledger(_config(config), roles=("arbiter",))
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
