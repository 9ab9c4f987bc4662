"""One-time setup of the escrow's on-chain pieces: a test mint, the 2-of-3 authority multisig, funded wallets.

On a real cluster the mint is a configured one (wrapped SOL) and only the multisig is created here; on
LiteSVM (tests, demo) this module also makes a mint and mints test tokens to the user's wallet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from cyxwiz.errors import LedgerError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.chain import Chain, SignatureStatus


@dataclass(frozen=True)
class EscrowAccounts:
    mint: Pubkey
    decimals: int
    multisig: Pubkey
    threshold: int


def send_and_confirm(
    chain: Chain,
    instructions: Sequence[Instruction],
    *,
    payer: Keypair,
    signers: Sequence[Keypair] = (),
    timeout_s: float = 30.0,
) -> str:
    """Sign with the latest blockhash, send, wait for the signature. For setup, not escrow moves."""
    blockhash, _ = chain.latest_blockhash()
    tx = txbuild.sign(instructions, payer=payer, signers=signers, blockhash=blockhash)
    signature = chain.send_raw(bytes(tx))
    status = wait_landed(chain, signature, timeout_s=timeout_s)
    if status.err is not None:
        raise LedgerError(f"setup transaction failed: {status.err}")
    return signature


def wait_landed(chain: Chain, signature: str, *, timeout_s: float = 30.0) -> SignatureStatus:
    """Poll until the chain reports the signature (at its commitment); LedgerError on timeout."""
    deadline = time.monotonic() + timeout_s
    while (status := chain.signature_status(signature)) is None:
        if time.monotonic() > deadline:
            raise LedgerError(f"transaction {signature} not confirmed in {timeout_s} s")
        time.sleep(0.02)
    return status


def create_multisig(
    chain: Chain, *, payer: Keypair, authorities: Sequence[Pubkey], threshold: int = 2
) -> Pubkey:
    if not 1 <= threshold <= len(authorities) <= 11:
        raise LedgerError("multisig needs 1 <= threshold <= signers <= 11", field="threshold", rule="F1")
    multisig = Keypair()
    rent = chain.minimum_rent(txbuild.RENT_SIZES["multisig"])
    instructions = txbuild.create_multisig(
        payer=payer.pubkey(), multisig=multisig.pubkey(), signers=authorities, threshold=threshold, rent=rent
    )
    send_and_confirm(chain, instructions, payer=payer, signers=[multisig])
    return multisig.pubkey()


def create_test_mint(chain: Chain, *, payer: Keypair, mint_authority: Pubkey, decimals: int = 6) -> Pubkey:
    mint = Keypair()
    rent = chain.minimum_rent(txbuild.RENT_SIZES["mint"])
    instructions = txbuild.create_mint(
        payer=payer.pubkey(), mint=mint.pubkey(), authority=mint_authority, decimals=decimals, rent=rent
    )
    send_and_confirm(chain, instructions, payer=payer, signers=[mint])
    return mint.pubkey()


def fund_wallet(
    chain: Chain,
    *,
    payer: Keypair,
    mint: Pubkey,
    wallet: Pubkey,
    amount: int,
    mint_authority: Keypair | None = None,
) -> Pubkey:
    """Ensure ``wallet`` has a token account; mint ``amount`` into it when a mint authority is given."""
    if amount and mint_authority is None:
        raise LedgerError("minting needs the mint authority", field="mint_authority")
    instructions = txbuild.fund_wallet(
        payer=payer.pubkey(),
        wallet=wallet,
        mint=mint,
        mint_authority=mint_authority.pubkey() if mint_authority else payer.pubkey(),
        amount=amount,
    )
    send_and_confirm(chain, instructions, payer=payer, signers=[mint_authority] if mint_authority else [])
    return txbuild.token_account_of(wallet, mint)
