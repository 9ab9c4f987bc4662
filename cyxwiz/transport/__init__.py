"""TLS 1.3 mTLS transport: context factories, peer identity, CRL hot reload, the mTLS ASGI server.

Public API::

    from cyxwiz.transport import (
        server_context, client_context,      # SSLContext factories (D1)
        PeerIdentity, peer_from_scope,       # who is calling (A5, C2)
        ServerTLS, MTLSServer,               # hot-reloading listener + uvicorn server (A6)
    )
"""

from __future__ import annotations

from cyxwiz.transport.connections import ConnectionRegistry
from cyxwiz.transport.identity import SCOPE_PEER_KEY, PeerIdentity, peer_from_scope
from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from cyxwiz.transport.tls import client_context, server_context

__all__ = [
    "SCOPE_PEER_KEY",
    "ConnectionRegistry",
    "MTLSServer",
    "PeerIdentity",
    "ServerTLS",
    "client_context",
    "peer_from_scope",
    "server_context",
]
