"""Assemble and run a coordinator: store + key ring + API + mTLS listener (``cyxwiz serve``, tests, demo)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from cyxwiz.audit import AuditSink
from cyxwiz.coordinator.api import create_app
from cyxwiz.coordinator.hooks import BasicHooks, CoordinatorHooks
from cyxwiz.coordinator.limits import GuardMiddleware, RefusalCap
from cyxwiz.coordinator.renewal import CertificateIssuer, RevocationRequest
from cyxwiz.coordinator.store import CoordinatorStore, NodeCertificate, NodeRecord
from cyxwiz.coordinator.watch import CoordinatorWatch
from cyxwiz.errors import ConflictError
from cyxwiz.tokens.issuer import TokenIssuer
from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing
from cyxwiz.tokens.reload import KeyRingReloader
from cyxwiz.tokens.verifier import TokenVerifier
from cyxwiz.transport.reload import PeerPolicy, ServerTLS
from cyxwiz.transport.server import MTLSServer

ISSUER = "cyxwiz-coordinator"
AUDIENCE = "cyxwiz-api"


@dataclass
class CARevoker:
    """Admin "revoke node": the issuer service revokes its certificates and signs the CRL (the coordinator
    holds no CA key, issue 17); the CRL is pushed to listeners here (A6).

    The issuer revokes only what it can check itself: the node's worker certificates, sent whole (PEM as
    the node presented them or the issuer signed them), never bare serials. Pushing through
    :meth:`ServerTLS.apply_crl` closes the node's live connections at once; other listeners (the gateway)
    get the same CRL bytes through ``push`` callables or their file watch.
    """

    issuer: CertificateIssuer
    listeners: list[ServerTLS] = field(default_factory=list)
    push: list[Callable[[bytes], None]] = field(default_factory=list)

    #: Every certificate on record for a node (current and earlier, renewed-from): its unexpired earlier
    #: ones are revoked with the current one, which they stay equal to until they expire (A7 renewal).
    certificates: Callable[[str], Sequence[NodeCertificate]] | None = None

    def __call__(self, node: NodeRecord, reason: str) -> None:
        data = self.issuer.revoke(self.request(node, reason))
        for tls in self.listeners:
            tls.apply_crl(data)
        for push in self.push:
            push(data)

    def request(self, node: NodeRecord, reason: str) -> RevocationRequest:
        """What the issuer is asked: the node's current certificate and its unexpired earlier ones."""
        held = list(self.certificates(node.node_id)) if self.certificates is not None else []
        current = next((c for c in held if c.peer_id == node.peer_id), None)
        if current is None:
            raise ConflictError(
                f"no certificate of node {node.node_id} on record to send the issuer: an operator revokes "
                f"serial {node.cert_serial} on the issuer host (cyxwiz certutil revoke)",
                field="certificate",
                rule="A6",
            )
        # An expired one is refused at the handshake anyway; a node renewed for weeks holds dozens.
        now = dt.datetime.now(dt.UTC)
        earlier = [c for c in held if c.peer_id != node.peer_id and c.not_after > now]
        return RevocationRequest(
            certificate=_load(current.pem), reason=reason, earlier=tuple(_load(c.pem) for c in earlier)
        )


def _load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _close_peer(tls: ServerTLS, peer_id: str) -> None:
    tls.connections.close_where(lambda p: p.peer_id == peer_id)


def load_or_create_keyring(path: Path) -> KeyRing:
    store = DirKeyRingStore(path)
    if (path / "ring.json").exists():
        return store.load()
    ring = KeyRing.generate()
    store.save(ring)
    return ring


@dataclass
class CoordinatorHandle:
    server: MTLSServer
    store: CoordinatorStore
    issuer: TokenIssuer
    verifier: TokenVerifier
    app: GuardMiddleware
    revoker: CARevoker | None
    watch: CoordinatorWatch | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def tls(self) -> ServerTLS:
        return self.server.tls

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.server.stop()

    def __enter__(self) -> CoordinatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_coordinator(
    *,
    cert: Path,
    key: Path,
    trust_bundle: Path,
    crl: Path | None,
    state_dir: Path,
    db_url: str | None = None,
    cert_issuer: CertificateIssuer | None = None,
    hooks: CoordinatorHooks | None = None,
    audit: AuditSink | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    require_client_cert: bool = False,
    keyring: KeyRing | None = None,
    crl_push: Sequence[Callable[[bytes], None]] = (),
    policy: PeerPolicy | None = None,
    **app_options: Any,
) -> CoordinatorHandle:
    """Wire a coordinator without starting it. Users may come without a client certificate
    (``require_client_cert=False``); node endpoints still demand one and a certificate that is presented
    is always verified, CRL included. ``cert_issuer``: where node renewals and revocations go — the issuer
    service's client (the coordinator holds no CA key, issue 17); None: both refused."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    audit = RefusalCap(audit) if audit is not None else None  # a refusal flood cannot fill the log (I)
    store = CoordinatorStore.from_url(db_url or f"sqlite:///{state_dir / 'coordinator.db'}")
    ring = keyring if keyring is not None else load_or_create_keyring(state_dir / "keyring")
    issuer = TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE, audit=audit)
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, revocations=store)
    tls = ServerTLS(
        cert=cert,
        key=key,
        trust_bundle=trust_bundle,
        crl=crl,
        require_client_cert=require_client_cert,
        audit=audit,
        policy=policy,  # a federation trust policy (A7, C1), checked after the handshake
    )
    revoker = (
        CARevoker(
            issuer=cert_issuer, listeners=[tls], push=list(crl_push), certificates=store.node_certificates
        )
        if cert_issuer is not None
        else None
    )
    app = create_app(
        renewer=cert_issuer,
        close_peer=lambda peer_id: _close_peer(tls, peer_id),
        store=store,
        issuer=issuer,
        verifier=verifier,
        hooks=hooks or BasicHooks(),
        audit=audit,
        revoker=revoker,
        **app_options,
    )
    server = MTLSServer(app=app, tls=tls, host=host, port=port, audit=audit)
    # A ring loaded from the state dir follows rotation on disk; one handed in is the caller's to manage.
    reloader = KeyRingReloader(ring=ring, path=state_dir / "keyring") if keyring is None else None
    watch = CoordinatorWatch(store=store, tls=tls, reloader=reloader, audit=audit).start()
    return CoordinatorHandle(
        server=server, store=store, issuer=issuer, verifier=verifier, app=app, revoker=revoker, watch=watch
    )


def start_coordinator(**options: Any) -> CoordinatorHandle:
    """:func:`build_coordinator` and start serving in a background thread; ``.stop()`` when done."""
    handle = build_coordinator(**options)
    handle.server.start()
    return handle
