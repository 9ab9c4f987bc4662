"""TLS 1.3 context factories for every cyxwiz connection (SPEC D1, A2, A3, A6).

One policy for all listeners and clients: TLS 1.3 only, Ed25519 certificates issued by our CA, strict X.509
parsing, no session tickets (a resumed TLS 1.3 session would skip the certificate and CRL check of a peer
revoked since), and CRL checking of the leaf when a CRL is given. SNI is never needed: the server picks the
same certificate whatever name is asked for, as libp2p does.

OpenSSL checks chain, validity, revocation and the EKU purpose ("ssl_client" on a server, "ssl_server" on a
client). It does not restrict the peer's key type, so :mod:`cyxwiz.transport.identity` refuses non-Ed25519
peers right after the handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.errors import ConfigError, KeyTypeError

#: ALPN we speak on the wire; HTTP/2 is not offered because the ASGI server stack here is HTTP/1.1.
ALPN_PROTOCOLS = ("http/1.1",)


def _check_key(key: Path) -> None:
    """Refuse a key that breaks the key-file rules before OpenSSL sees it (A2, A4)."""
    from cyxwiz.pki.keys import load_private_key

    private = load_private_key(key)
    if not isinstance(private, Ed25519PrivateKey):  # load_private_key already refuses; belt and braces
        raise KeyTypeError("only Ed25519 keys are used on the wire", path=str(key), rule="A2")


def _check_cert_key_type(cert: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    first = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    if not isinstance(first.public_key(), Ed25519PublicKey):
        raise KeyTypeError("certificate key is not Ed25519", path=str(cert), rule="A2")


def _base_context(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return ctx


def _load_trust(ctx: ssl.SSLContext, trust_bundle: Path, crl: Path | None) -> None:
    if not trust_bundle.is_file():
        raise ConfigError("trust bundle not found", path=str(trust_bundle), rule="A1")
    ctx.load_verify_locations(cafile=str(trust_bundle))
    if crl is not None:
        if not crl.is_file():
            raise ConfigError("CRL file not found", path=str(crl), rule="A6")
        # A PEM file may hold several CRLs (one per issuing CA); all of them are loaded.
        ctx.load_verify_locations(cafile=str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(
    *,
    cert: Path,
    key: Path,
    trust_bundle: Path,
    crl: Path | None,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """A server context: TLS 1.3, our Ed25519 cert, client certificates verified against the bundle and CRL.

    ``require_client_cert=False`` is only for the user-facing listener where callers authenticate with user
    tokens (a presented client certificate is still verified).
    """
    _check_key(key)
    _check_cert_key_type(cert)
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.3 servers send tickets unless told not to; zero tickets means every connection is a full
    # handshake with a fresh certificate and CRL check.
    ctx.num_tickets = 0
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    _load_trust(ctx, trust_bundle, crl)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    *,
    trust_bundle: Path,
    cert: Path | None = None,
    key: Path | None = None,
    crl: Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context: TLS 1.3, server verified against the bundle (and CRL), our cert if given.

    Pass the returned context to httpx as ``verify=ctx`` (httpx drops ``cert=`` when ``verify`` is a path).
    ``trust_bundle`` must hold one organization's CAs only (:mod:`cyxwiz.pki.server_trust`).
    ``check_hostname=False`` is for peers addressed by PeerID rather than name; the chain and the
    ``ssl_server`` purpose are still checked, and callers then compare the server's PeerID.
    """
    if trust_bundle.is_file():
        from cyxwiz.pki.server_trust import require_one_organization

        # Servers are vouched for by one organization, the control plane's: a federation bundle would let
        # any member organization certify a server in its name (A7; docs/federation.md).
        require_one_organization(trust_bundle)
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    _load_trust(ctx, trust_bundle, crl)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise ConfigError("a client certificate needs both cert and key", field="cert", rule="D1")
        _check_key(key)
        _check_cert_key_type(cert)
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx
