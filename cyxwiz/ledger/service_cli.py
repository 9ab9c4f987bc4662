"""``cyxwiz ledger``: run the local ledger service (LiteSVM behind Solana JSON-RPC on loopback)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cyxwiz._cli import new_app

app = new_app(help="The local ledger service: LiteSVM behind Solana JSON-RPC on loopback (embedded default).")


@app.callback()
def _group() -> None:
    """The local ledger service: LiteSVM behind Solana JSON-RPC on loopback (embedded default)."""


@app.command("serve")
def serve_command(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Directory for the snapshot file (created, 0700).")
    ] = Path(".cyxwiz/ledger"),
    host: Annotated[
        str, typer.Option("--host", help="Loopback address to listen on (other addresses are refused).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="TCP port; 0 picks a free one (see --ready-file).")
    ] = 8899,
    ready_file: Annotated[
        Path | None, typer.Option("--ready-file", help="Write {rpc_url, pid} here once listening.")
    ] = None,
    dev_methods: Annotated[
        bool,
        typer.Option("--dev-methods", help="Enable cyxwiz_expireBlockhash (tests: expire the blockhash)."),
    ] = False,
) -> None:
    """Serve until interrupted; balances persist in STATE_DIR/ledger-snapshot.json across restarts.

    Example: cyxwiz ledger serve --state-dir .demo/ledger --port 8899
    """
    from cyxwiz.ledger.service import serve

    serve(state_dir=state_dir, host=host, port=port, ready_file=ready_file, dev_methods=dev_methods)


if __name__ == "__main__":
    app(prog_name="cyxwiz ledger")
