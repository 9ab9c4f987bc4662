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
from blocks.control_plane import ControlPlaneBlock

__all__ = [
    "ControlPlaneBlock",
    "EscrowLedgerBlock",
    "ObjectStoreBlock",
    "PKIMaterialBlock",
    "SandboxPolicyBlock",
    "TokenSigningKeyBlock",
]
