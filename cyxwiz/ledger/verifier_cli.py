"""``python -m cyxwiz.ledger.verifier_cli serve``: run the verifier service (its own process, F1).

It unseals only the verifier's escrow key (``CYXWIZ_VERIFIER_PASSPHRASE``) and loads the ``verifier``
certificate's Ed25519 key named in the ledger config; nothing else can sign here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyxwiz._cli import new_app

if TYPE_CHECKING:
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.stake import NodePeers
    from cyxwiz.ledger.verifier_service import VerifierService, VerifyHook

app = new_app(
    help="The verifier service: co-signs escrow releases only for passing, verifier-signed reports."
)


@app.callback()
def _group() -> None:
    """The verifier service: co-signs escrow releases only for passing, verifier-signed reports."""


def build_service(
    config: LedgerConfig,
    *,
    verify: VerifyHook | None = None,
    audit: Any = None,
    verdicts_path: Path | None = None,
    node_peers: NodePeers | None = None,
    payout_wallet: Callable[[str], str | None] | None = None,
    later_peers: NodePeers | None = None,
    proof_key: Callable[[str], str | None] | None = None,
) -> VerifierService:
    """The service's app from the ledger config: the verifier key, its certificate, the escrow store,
    and its own book of verdicts (``verifier_db``, else ``verdicts_path``: a file beside its socket).
    ``node_peers``: the coordinator's links between a node's PeerIDs (a slash takes the node's stake)."""
    from solders.pubkey import Pubkey

    from cyxwiz.errors import ConfigError
    from cyxwiz.ledger.cosign import VerifierPolicy
    from cyxwiz.ledger.records import EscrowRecord
    from cyxwiz.ledger.rpc import RpcChain
    from cyxwiz.ledger.stake import StakeBook
    from cyxwiz.ledger.store import EscrowStore
    from cyxwiz.ledger.verdicts import VerdictBook
    from cyxwiz.ledger.verifier_service import VerifierService
    from cyxwiz.pki.certs import Role, load_certificate, role_of
    from cyxwiz.pki.keys import load_private_key

    policy = config.attestation_policy()
    cert_path, key_path = config._path(config.verifier_cert), config._path(config.verifier_key)
    if policy is None or cert_path is None or key_path is None:
        raise ConfigError(
            "the verifier service needs trust_bundle, verifier_cert and verifier_key", field="verifier_cert"
        )
    certificate = load_certificate(cert_path)
    if role_of(certificate) is not Role.VERIFIER:
        raise ConfigError(
            "verifier_cert is not a certificate of role 'verifier'", field="verifier_cert", rule="F1"
        )
    store = EscrowStore.open(config.db_url)
    book_path = config._path(config.verifier_db) or verdicts_path
    if book_path is None:
        raise ConfigError("the verifier service needs its own verdict book", field="verifier_db", rule="F1")
    return VerifierService(
        keypair=config.load_key("verifier"),
        policy=VerifierPolicy(
            attestations=policy,
            lookup=lambda job_id: EscrowRecord.from_row(store.get(job_id)),
            mint=Pubkey.from_string(config.mint),
            rent_owner=config.pubkey("payer"),
            dispute_multisig=Pubkey.from_string(config.dispute_multisig) if config.dispute_multisig else None,
            stakes=StakeBook(store._engine),
            stake_policy=config.stake_policy(),
            escrow_store=store,
            verdicts=VerdictBook.open(book_path),
            node_peers=node_peers,
            payout_wallet=payout_wallet,
            later_peers=later_peers,
            proof_key=proof_key,
            chain=RpcChain(url=config.rpc_url, commitment=config.commitment),
        ),
        signing_key=load_private_key(key_path),
        certificate=certificate,
        verify=verify,
        audit=audit,
    )


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Ledger config JSON.")]
SocketOption = Annotated[
    Path | None, typer.Option("--socket", help="Unix socket path (default: verifier_socket of the config).")
]
ReadyOption = Annotated[Path | None, typer.Option("--ready-file", help="Written once listening.")]
ModeOption = Annotated[str, typer.Option("--socket-mode", help="600 (owner only) or 660 (its group too).")]


def run(config_path: Path, socket: Path | None, ready_file: Path | None, *, verify: VerifyHook | None = None,
        audit: Any = None, node_peers: NodePeers | None = None,
        payout_wallet: Callable[[str], str | None] | None = None, later_peers: NodePeers | None = None,
        proof_key: Callable[[str], str | None] | None = None, socket_mode: int = 0o600) -> None:  # fmt: skip
    from cyxwiz.errors import ConfigError
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.verifier_service import serve

    config = LedgerConfig.from_file(config_path)
    path = socket or config.verifier_socket_path()
    if path is None:
        raise ConfigError("no socket path", field="verifier_socket")
    app = build_service(
        config, verify=verify, audit=audit, verdicts_path=path.parent / "verifier-verdicts.db",
        node_peers=node_peers, payout_wallet=payout_wallet, later_peers=later_peers, proof_key=proof_key,
    )  # fmt: skip
    serve(app, socket_path=path, ready_file=ready_file, mode=socket_mode)


@app.command("serve")
def serve_command(
    config: ConfigOption,
    socket: SocketOption = None,
    ready_file: ReadyOption = None,
    socket_mode: ModeOption = "600",
) -> None:
    """Serve co-signatures on a 0600 (or 0660) Unix socket until interrupted.

    Example: CYXWIZ_VERIFIER_PASSPHRASE=... python -m cyxwiz.ledger.verifier_cli serve -c ledger.json
    """
    from cyxwiz.errors import ConfigError

    if socket_mode not in ("600", "660"):
        raise ConfigError("must be 600 or 660", field="socket_mode", rule="F1")
    run(config, socket, ready_file, socket_mode=int(socket_mode, 8))


if __name__ == "__main__":
    app(prog_name="cyxwiz-verifier")
