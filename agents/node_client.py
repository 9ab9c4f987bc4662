"""The node's side of the coordinator API, always over mTLS with the node's certificate (SPEC A5, D1)."""

from __future__ import annotations

import ssl

from agents.settings import AgentSettings
from cyxwiz.errors import ConfigError


def client_ssl_context(settings: AgentSettings) -> ssl.SSLContext:
    """TLS 1.3 client context presenting the node certificate and verifying the control plane's."""
    from cyxwiz.transport.tls import client_context

    if settings.cert is None or settings.key is None or settings.ca_bundle is None:
        raise ConfigError(
            "the node agent needs CYXWIZ_NODE_CERT, CYXWIZ_NODE_KEY and CYXWIZ_CA_BUNDLE",
            field="CYXWIZ_NODE_CERT",
            rule="A5",
        )
    return client_context(
        trust_bundle=settings.ca_bundle, cert=settings.cert, key=settings.key, crl=settings.crl
    )
