"""``cyxwiz``: the command line.

Each command group lives beside the code it drives (``cyxwiz/pki/cli.py`` for ``certutil`` and so on)
and is registered here once it has commands. Group modules import heavy libraries (torch, solana,
boto3) inside their commands, so ``cyxwiz --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from cyxwiz import __version__
from cyxwiz._cli import new_app

app = new_app(
    help=(
        "cyxwiz: rent GPUs for ML training with escrowed payment, mTLS-authenticated nodes, "
        "sandboxed training and verified results.\n\n"
        "Start with [bold]cyxwiz demo[/bold] for the whole job lifecycle on embedded defaults."
    )
)

#: (command name, module holding ``app``). A group with no commands yet is not shown.
_GROUPS: tuple[tuple[str, str], ...] = (
    ("certutil", "cyxwiz.pki.cli"),
    ("keys", "cyxwiz.keys.cli"),
    ("token", "cyxwiz.tokens.cli"),
    ("audit", "cyxwiz.audit.cli"),
    ("sandbox", "cyxwiz.sandbox.cli"),
    ("store", "cyxwiz.storage.cli"),
    ("escrow", "cyxwiz.ledger.cli"),
    ("ledger", "cyxwiz.ledger.service_cli"),
    ("verify-job", "cyxwiz.verification.cli"),
    ("serve", "cyxwiz.coordinator.cli"),
    ("issuer", "cyxwiz.issuer.cli"),
    ("gateway", "cyxwiz.gateway.cli"),
    ("job", "cyxwiz.jobs_cli"),
)


def _register_groups() -> None:
    for name, module_name in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        group: typer.Typer = module.app
        if group.registered_commands or group.registered_groups:
            app.add_typer(group, name=name)


@app.command()
def version() -> None:
    """Print the cyxwiz version."""
    typer.echo(__version__)


@app.command()
def demo(
    workdir: str = typer.Option(
        ".demo", "--workdir", help="Directory for the demo's PKI, ledger, store and logs (wiped each run)."
    ),
    keep: bool = typer.Option(
        False, "--keep", help="Keep every service (and the Prefect UI) up until Ctrl-C."
    ),
    hsm: bool = typer.Option(
        False,
        "--hsm",
        help="Keep the CA, token signing, audit checkpoint and escrow authority keys in a SoftHSM2 token.",
    ),
) -> None:
    """Run one real job through every part on the embedded defaults and show each step.

    PKI, Prefect server, ledger service (LiteSVM), coordinator (mTLS), a node agent, escrow lock, sandboxed
    training, verification (holdout + replay), release, archive, audit verify. Takes about a minute.

    Example: [bold]cyxwiz demo --keep[/bold], then open the Prefect UI URL it prints.
    """
    from cyxwiz.demo import run_demo

    code = run_demo(workdir=workdir, keep=keep, hsm=hsm)
    if code:
        raise typer.Exit(code)


_register_groups()


def main() -> None:
    app(prog_name="cyxwiz")


if __name__ == "__main__":
    main()
