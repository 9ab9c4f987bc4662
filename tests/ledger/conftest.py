"""Fixtures for the escrow ledger: a provisioned chain (mint, 2-of-3 multisig, funded user, node wallet)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cyxwiz.ledger import provision, txbuild
from cyxwiz.ledger.chain import Chain, LocalChain
from cyxwiz.ledger.embedded import LocalLedgerHandle, start_local_ledger
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.rpc import RpcChain
from cyxwiz.ledger.store import EscrowStore, IntentStatus

LAMPORTS_PER_SIGNATURE = 5000
USER_FUNDS = 1_000_000
MINIMUM = 1_000


@dataclass
class World:
    chain: Chain
    payer: Keypair
    coordinator: Keypair
    verifier: Keypair
    arbiter: Keypair
    mint_authority: Keypair
    mint: Pubkey
    multisig: Pubkey
    user: Keypair
    node: Keypair
    other_node: Keypair
    db_url: str
    expire: Callable[[], object]
    ledgers: list[EscrowLedger] = field(default_factory=list)

    def ledger(self, **overrides: Any) -> EscrowLedger:
        kwargs: dict[str, Any] = {
            "chain": self.chain,
            "store": EscrowStore.open(self.db_url),
            "mint": self.mint,
            "decimals": 6,
            "multisig": self.multisig,
            "payer": self.payer,
            "coordinator": self.coordinator,
            "verifier": self.verifier,
            "arbiter": self.arbiter,
            "minimum_payment": MINIMUM,
            "confirm_timeout_s": 5.0,
        }
        kwargs.update(overrides)
        ledger = EscrowLedger(**kwargs)
        self.ledgers.append(ledger)
        return ledger

    def expire_blockhash(self) -> None:
        self.expire()

    def token(self, wallet: Keypair | Pubkey) -> int:
        owner = wallet.pubkey() if isinstance(wallet, Keypair) else wallet
        return self.chain.token_amount(txbuild.token_account_of(owner, self.mint)) or 0

    def token_total(self, *job_ids: str) -> int:
        escrows = sum(
            self.chain.token_amount(txbuild.escrow_address(self.payer.pubkey(), j)) or 0 for j in job_ids
        )
        return self.token(self.user) + self.token(self.node) + self.token(self.other_node) + escrows

    def lamport_total(self, *job_ids: str) -> int:
        keys = [self.payer.pubkey(), self.user.pubkey(), self.node.pubkey(), self.other_node.pubkey()]
        keys += [txbuild.token_account_of(k, self.mint) for k in list(keys)]
        keys += [txbuild.escrow_address(self.payer.pubkey(), j) for j in job_ids]
        keys += [self.mint, self.multisig]
        return sum(self.chain.lamports(k) for k in keys)

    def fees(self, ledger: EscrowLedger) -> int:
        """Fees paid by every confirmed escrow transaction (a failed preflight costs nothing)."""
        total = 0
        for intent in ledger.store.intents(status=IntentStatus.CONFIRMED):
            total += LAMPORTS_PER_SIGNATURE * len(VersionedTransaction.from_bytes(intent.tx).signatures)
        return total


def build_world(
    chain: Chain, db_url: str, *, fund: Callable[[Pubkey, int], None], expire: Callable[[], object]
) -> World:
    payer, coordinator, verifier, arbiter, mint_authority = (Keypair() for _ in range(5))
    fund(payer.pubkey(), 10_000_000_000)
    user, node, other_node = Keypair(), Keypair(), Keypair()
    fund(user.pubkey(), 1_000_000_000)
    multisig = provision.create_multisig(
        chain, payer=payer, authorities=[coordinator.pubkey(), verifier.pubkey(), arbiter.pubkey()]
    )
    mint = provision.create_test_mint(chain, payer=payer, mint_authority=mint_authority.pubkey())
    provision.fund_wallet(
        chain, payer=payer, mint=mint, wallet=user.pubkey(), amount=USER_FUNDS, mint_authority=mint_authority
    )
    for wallet in (node, other_node):
        provision.fund_wallet(chain, payer=payer, mint=mint, wallet=wallet.pubkey(), amount=0)
    return World(
        chain=chain,
        payer=payer,
        coordinator=coordinator,
        verifier=verifier,
        arbiter=arbiter,
        mint_authority=mint_authority,
        mint=mint,
        multisig=multisig,
        user=user,
        node=node,
        other_node=other_node,
        db_url=db_url,
        expire=expire,
    )


@pytest.fixture
def local_world(tmp_path: Path) -> Iterator[World]:
    """In-process LiteSVM, SQLite store."""
    chain = LocalChain()
    world = build_world(
        chain, f"sqlite:///{tmp_path / 'escrow.db'}", fund=chain.airdrop, expire=chain.expire_blockhash
    )
    yield world
    for ledger in world.ledgers:
        ledger.store.dispose()


@pytest.fixture(scope="module")
def ledger_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLedgerHandle]:
    """One local ledger service per test module (start-up costs ~1 s); tests use fresh keys and mints."""
    with start_local_ledger(tmp_path_factory.mktemp("ledger-service"), dev_methods=True) as handle:
        yield handle


@pytest.fixture
def rpc_world(ledger_service: LocalLedgerHandle, tmp_path: Path) -> Iterator[World]:
    """Through the local ledger service over JSON-RPC (solana-py), SQLite store."""
    chain = RpcChain(url=ledger_service.rpc_url)
    world = build_world(
        chain,
        f"sqlite:///{tmp_path / 'escrow.db'}",
        fund=chain.airdrop,
        expire=lambda: chain.call("cyxwiz_expireBlockhash"),
    )
    yield world
    for ledger in world.ledgers:
        ledger.store.dispose()
    chain.close()


@pytest.fixture(params=["local", "rpc"])
def world(request: pytest.FixtureRequest) -> World:
    """Every escrow test runs on in-process LiteSVM and through the local ledger service."""
    fixture = "local_world" if request.param == "local" else "rpc_world"
    result: World = request.getfixturevalue(fixture)
    return result
