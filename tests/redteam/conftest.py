"""The money world the red-team suites attack: a provisioned escrow ledger (mint, 2-of-3 multisig, dispute
multisig, a funded user, two node wallets) on the local ledger service — LiteSVM behind Solana JSON-RPC,
the embedded default's real service — with a dev PKI whose verifier certificate signs attestations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cyxwiz.ledger.embedded import LocalLedgerHandle, start_local_ledger
from cyxwiz.ledger.rpc import RpcChain
from tests.ledger.conftest import World, build_world, make_pki


@pytest.fixture(scope="module")
def money_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLedgerHandle]:
    """One ledger service per module (start-up ~1 s); each test provisions fresh keys and a fresh mint."""
    with start_local_ledger(tmp_path_factory.mktemp("money-ledger"), dev_methods=True) as handle:
        yield handle


@pytest.fixture
def money_world(money_service: LocalLedgerHandle, tmp_path: Path) -> Iterator[World]:
    chain = RpcChain(url=money_service.rpc_url)
    world = build_world(
        chain, f"sqlite:///{tmp_path / 'escrow.db'}", fund=chain.airdrop,
        expire=lambda: chain.call("cyxwiz_expireBlockhash"), pki=make_pki(tmp_path / "ledger-pki"),
    )  # fmt: skip
    yield world
    for ledger in world.ledgers:
        ledger.store.dispose()
    chain.close()
