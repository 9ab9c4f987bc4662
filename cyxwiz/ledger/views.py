"""Read-only views of the escrow ledger: balances over RPC and escrow rows, with no signing key (F1).

The coordinator's ``/v1/wallet`` and other user- or node-facing views use these, so no process that
faces users or nodes needs to unseal an escrow authority key just to show a balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from solders.pubkey import Pubkey

from cyxwiz.ledger import txbuild
from cyxwiz.ledger.records import EscrowRecord, check_wallet
from cyxwiz.ledger.store import EscrowState, EscrowStore

if TYPE_CHECKING:
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.rpc import RpcChain


@dataclass(frozen=True)
class WalletView:
    chain: RpcChain
    store: EscrowStore
    mint: Pubkey

    @classmethod
    def from_config(cls, config: LedgerConfig) -> WalletView:
        from cyxwiz.ledger.rpc import RpcChain

        return cls(
            chain=RpcChain(url=config.rpc_url, commitment=config.commitment),
            store=EscrowStore.open(config.db_url),
            mint=Pubkey.from_string(config.mint),
        )

    def balance(self, wallet: str | Pubkey) -> int:
        """Token base units the wallet holds (0 when it has no token account yet)."""
        owner = check_wallet(wallet, field="wallet")
        return self.chain.token_amount(txbuild.token_account_of(owner, self.mint)) or 0

    def escrows(
        self, *, user_wallet: str | None = None, states: list[EscrowState] | None = None
    ) -> list[EscrowRecord]:
        """Escrow rows, optionally only those one wallet funded."""
        rows = [EscrowRecord.from_row(r) for r in self.store.list_escrows(states=states)]
        return [r for r in rows if user_wallet is None or r.user_wallet == user_wallet]

    def close(self) -> None:
        self.chain.close()
        self.store.dispose()
