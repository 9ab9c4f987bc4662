"""cyxwiz.ledger: escrow on Solana over JSON-RPC, and the local ledger service (LiteSVM).

Public names are imported lazily so ``cyxwiz --help`` does not load solders/SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyxwiz.ledger.chain import Chain, LocalChain
    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.records import EscrowRecord
    from cyxwiz.ledger.store import EscrowState, EscrowStore

_EXPORTS = {
    "Chain": "cyxwiz.ledger.chain",
    "LocalChain": "cyxwiz.ledger.chain",
    "EscrowLedger": "cyxwiz.ledger.ledger",
    "EscrowRecord": "cyxwiz.ledger.records",
    "EscrowState": "cyxwiz.ledger.store",
    "EscrowStore": "cyxwiz.ledger.store",
}

__all__ = ["Chain", "EscrowLedger", "EscrowRecord", "EscrowState", "EscrowStore", "LocalChain"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(module), name)
