"""The embedded stack's wallets: the demo user's and each extra user's own sealed wallet (their client signs
escrow locks with it), each node's payout wallet, the audit-anchor fee wallet, and the nodes' stakes (F1, C2).
The control plane's ledger directory keeps only the escrow authorities, the payer and the test mint."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: each embedded node's stake: the minimum to be dispatched to (base units; the demo's minimum payment)
STAKE = 1_000_000


def stake_nodes(pki: Any, demo_ledger: Any, nodes: tuple[str, ...], say: Callable[[str], None]) -> None:
    """Lock each node's minimum stake (the node wallet signs the deposit) so it may be dispatched to (F1).
    The verifier service must be running: the stake account's authority is the 2-of-3 multisig."""
    from cyxwiz.ledger.stake import StakeLedger
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.peerid import peer_id
    from tasks import services

    stakes = StakeLedger(ledger=services.ledger(), policy=demo_ledger.config.stake_policy())
    for name in nodes:
        # by path, not pki.node_cert: a federation's other organizations name nodes by DNS name (dots)
        peer = peer_id(load_certificate(pki.root / "nodes" / f"{name}-cert.pem"))
        staked = stakes.stake(peer_id=peer, node=demo_ledger.node, amount=STAKE)
        say(f"{name} staked {staked.amount:,} base units in {staked.stake_account} (2-of-3 authority)")


def anchor_wallet(home: Path, env: dict[str, str], *, rpc_url: str, passphrase: bytes) -> None:
    """A dedicated low-value wallet (fees only, sealed 0600) that pays the audit-anchor memos (H4)."""
    from solders.keypair import Keypair

    from cyxwiz.ledger.keystore import KdfParams, write_keypair
    from cyxwiz.ledger.rpc import RpcChain

    wallet = Keypair()
    chain = RpcChain(url=rpc_url)
    try:
        chain.airdrop(wallet.pubkey(), 10**8)
    finally:
        chain.close()
    path = home / "audit-anchor.key"
    write_keypair(path, wallet, passphrase=passphrase, params=KdfParams.fast_for_tests(), overwrite=True)
    values = {"CYXWIZ_AUDIT_ANCHOR_KEY": str(path), "CYXWIZ_AUDIT_ANCHOR_PUBKEY": str(wallet.pubkey())}
    env.update(values)
    os.environ.update(values)


def hand_out_wallets(demo: Any) -> Any:
    """Take the demo user's and node's keys out of the control plane's ledger directory: the user's goes
    to the user's own area (their client signs with it), the node's to its operator; the ledger config
    keeps only the escrow authorities, the payer and the test mint authority (F1, C2)."""
    import dataclasses

    from cyxwiz.ledger.config import LedgerConfig

    keys = {k: v for k, v in demo.config.keys.items() if k not in ("user", "node")}
    for name in ("user", "node"):
        path = demo.config.key_path(name)
        if path is not None:
            path.unlink(missing_ok=True)
    dataclasses.replace(demo.config, keys=keys).to_file(demo.config_path)
    return dataclasses.replace(demo, config=LedgerConfig.from_file(demo.config_path))


def user_dir(home: Path, name: str) -> tuple[Path, bytes]:
    """``home/users/<name>``: the user's wallet key and its passphrase file, both 0600."""
    directory = home / "users" / name
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_urlsafe(24).encode()
    pass_file = directory / "wallet.pass"
    fd = os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return directory, secret


def demo_user_wallet(demo: Any, home: Path) -> Any:
    """The demo user's key (made by the ledger's provisioning) moved into ``home/users/demo-user``."""
    from cyxwiz.jobs.wallet import UserWallet
    from cyxwiz.ledger.keystore import write_keypair

    directory, secret = user_dir(home, "demo-user")
    write_keypair(directory / "wallet.key", demo.user, passphrase=secret, overwrite=True)
    return UserWallet(path=directory / "wallet.key", passphrase=secret)


def new_wallet(
    ledger_config: Any,
    ledger_passphrase: bytes,
    path: Path,
    *,
    passphrase: bytes | None = None,
    funds: int = 0,
) -> Any:
    """A sealed wallet at ``path`` funded with ``funds`` tokens from the test mint; its public key."""
    from cyxwiz.ledger.rpc import RpcChain
    from cyxwiz.ledger.wallets import create_wallet

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    chain = RpcChain(url=ledger_config.rpc_url)
    try:
        return create_wallet(
            chain,
            config=ledger_config,
            ledger_passphrase=ledger_passphrase,
            path=path,
            passphrase=passphrase or secrets.token_urlsafe(24).encode(),
            funds=funds,
        )
    finally:
        chain.close()


def user_wallet(ledger_config: Any, ledger_passphrase: bytes, home: Path, name: str, *, funds: int) -> Any:
    """User ``name``'s own funded wallet under ``home/users/<name>`` (a :class:`UserWallet`)."""
    from cyxwiz.jobs.wallet import UserWallet

    directory, secret = user_dir(home, name)
    new_wallet(ledger_config, ledger_passphrase, directory / "wallet.key", passphrase=secret, funds=funds)
    return UserWallet(path=directory / "wallet.key", passphrase=secret)
