"""Reading the ledger with no key at all: balances, a user's own escrows, the terms a client signs (C2).

The one read-only view (balances over RPC, escrows selected by job — the caller's own jobs only — and the
funding terms). What faces users (``/v1/wallet``, ``/v1/wallet/terms``) opens this, never an
:class:`~cyxwiz.ledger.ledger.EscrowLedger`: a process that only reads cannot move funds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from solders.pubkey import Pubkey

from cyxwiz.errors import NotFoundError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.chain import Chain
from cyxwiz.ledger.client_funding import FundingTerms, terms_from_chain
from cyxwiz.ledger.config import LedgerConfig
from cyxwiz.ledger.records import EscrowRecord, check_job_id, check_wallet
from cyxwiz.ledger.store import EscrowStore


@dataclass(frozen=True, kw_only=True)
class LedgerView:
    chain: Chain
    store: EscrowStore
    mint: Pubkey
    decimals: int
    multisig: Pubkey
    #: The control plane's fee payer (public key only): it signs a lock last and pays its rent.
    payer: Pubkey
    minimum_payment: int

    @classmethod
    def from_config(cls, config: LedgerConfig) -> LedgerView:
        from cyxwiz.errors import ConfigError
        from cyxwiz.ledger.keystore import read_pubkey
        from cyxwiz.ledger.rpc import RpcChain

        payer = config.key_path("payer")
        if payer is None:
            raise ConfigError("the ledger config names no fee payer", field="keys.payer")
        return cls(
            chain=RpcChain(url=config.rpc_url, commitment=config.commitment),
            payer=Pubkey.from_string(read_pubkey(payer)),
            store=EscrowStore.open(config.db_url),
            mint=Pubkey.from_string(config.mint),
            decimals=config.decimals,
            multisig=Pubkey.from_string(config.multisig),
            minimum_payment=config.minimum_payment,
        )

    def close(self) -> None:
        self.chain.close()
        self.store.dispose()

    def funding_terms(self) -> FundingTerms:
        return terms_from_chain(
            self.chain,
            mint=self.mint,
            decimals=self.decimals,
            multisig=self.multisig,
            payer=self.payer,
            minimum_payment=self.minimum_payment,
        )

    def balance(self, wallet: str | Pubkey) -> int:
        """Token base units in the wallet's token account (0 when it has none)."""
        owner = check_wallet(wallet, field="wallet")
        return self.chain.token_amount(txbuild.token_account_of(owner, self.mint)) or 0

    def escrow(self, job_id: str) -> EscrowRecord | None:
        try:
            return EscrowRecord.from_row(self.store.get(check_job_id(job_id)))
        except NotFoundError:
            return None

    def escrows(self, job_ids: Iterable[str]) -> list[EscrowRecord]:
        """The escrows of exactly these jobs (a caller passes only jobs it owns)."""
        return [record for job_id in job_ids if (record := self.escrow(job_id)) is not None]
