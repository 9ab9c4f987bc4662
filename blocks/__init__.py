"""Prefect blocks for cyxwiz configuration and secrets.

``prefect block register -m blocks`` registers every block type exported here.
"""

from blocks.config import (
    EscrowLedgerBlock,
    ObjectStoreBlock,
    PKIMaterialBlock,
    SandboxPolicyBlock,
    TokenSigningKeyBlock,
)

__all__ = [
    "EscrowLedgerBlock",
    "ObjectStoreBlock",
    "PKIMaterialBlock",
    "SandboxPolicyBlock",
    "TokenSigningKeyBlock",
]
