"""Wallets that belong to someone: one per demo user and one per node, made and funded on the test mint.

The embedded stack (demo, tests) plays each user's and each node operator's part here: the key is sealed
into *their* file (0600) under *their* passphrase, and only the public key goes to the control plane
(a node registers it as its payout wallet; a user's client signs locks with it). Nothing here is
reachable from the control plane's own ledger configuration (F1, C2).
"""

from __future__ import annotations

from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from cyxwiz.ledger import provision
from cyxwiz.ledger.chain import Chain
from cyxwiz.ledger.config import LedgerConfig
from cyxwiz.ledger.keystore import KdfParams, load_keypair, write_keypair

#: Lamports a new demo wallet gets for fees and its escrows' rent (the user pays both when funding).
WALLET_LAMPORTS = 10**9


def create_wallet(
    chain: Chain,
    *,
    config: LedgerConfig,
    ledger_passphrase: bytes,
    path: Path,
    passphrase: bytes,
    funds: int = 0,
    kdf: KdfParams | None = None,
) -> Pubkey:
    """A new wallet sealed at ``path``, airdropped lamports and (test mint only) ``funds`` tokens."""
    wallet = Keypair()
    write_keypair(path, wallet, passphrase=passphrase, params=kdf)
    payer_path, minter_path = config.key_path("payer"), config.key_path("mint_authority")
    if payer_path is None or minter_path is None:
        raise ValueError("the ledger config names no payer or mint_authority key (not a test mint)")
    payer = load_keypair(payer_path, passphrase=ledger_passphrase)
    minter = load_keypair(minter_path, passphrase=ledger_passphrase) if funds else None
    chain.airdrop(wallet.pubkey(), WALLET_LAMPORTS)
    provision.fund_wallet(
        chain,
        payer=payer,
        mint=Pubkey.from_string(config.mint),
        wallet=wallet.pubkey(),
        amount=funds,
        mint_authority=minter,
    )
    return wallet.pubkey()
