"""What changes under a running coordinator reaches it within a second (SPEC A6, B4, B5; issue 18).

A rotated key ring written by the scheduled flow is adopted (:class:`~cyxwiz.tokens.reload.KeyRingReloader`);
a new CRL — a revoked user or node certificate — revokes every session opened with that certificate, so
its refresh family dies with it even when its holder is not connected.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.poller import Poller
from cyxwiz.tokens.reload import KeyRingReloader
from cyxwiz.transport.crl import CRLSnapshot
from cyxwiz.transport.reload import ServerTLS


def revoked_cas(cas: Sequence[x509.Certificate], revoked: frozenset[tuple[str, int]]) -> frozenset[str]:
    """Subject DNs of the trusted CAs the CRL revokes, and of every CA below one (an intermediate the root
    revoked takes what it issued with it, as the handshake does: A6)."""
    dead: set[str] = set()
    grew = True
    while grew:
        grew = False
        for ca in cas:
            subject, issuer = ca.subject.rfc4514_string(), ca.issuer.rfc4514_string()
            if subject in dead or subject == issuer:
                continue
            if (issuer, ca.serial_number) in revoked or issuer in dead:
                dead.add(subject)
                grew = True
    return frozenset(dead)


class CoordinatorWatch:
    def __init__(
        self,
        *,
        store: CoordinatorStore,
        tls: ServerTLS,
        reloader: KeyRingReloader | None,
        audit: AuditSink | None,
        interval: float = 0.5,
    ) -> None:
        self.store, self.tls, self.reloader, self.audit = store, tls, reloader, audit
        self.interval = interval
        self._seen: CRLSnapshot | None = None
        self._poller = Poller(
            check=self.check_now, interval=lambda: self.interval, name="cyxwiz-coordinator-watch"
        )

    def check_now(self) -> list[str]:
        """Reload the ring if rotated; revoke the sessions of certificates the CRL in force names."""
        if self.reloader is not None:
            self.reloader.check_now()
        snapshot = self.tls.snapshot
        if snapshot is None or snapshot is self._seen:
            return []
        self._seen = snapshot
        doomed = self.store.revoke_sessions_of_certs(
            snapshot.revoked, dead_issuers=revoked_cas(self.tls.trusted_cas, snapshot.revoked)
        )
        for session_id in doomed:
            if self.audit is not None:
                self.audit.record(
                    ev.revocation(
                        actor_id="coordinator",
                        actor_type=ev.ActorType.SERVICE,
                        kind="token-family",
                        target=session_id,
                        reason="certificate revoked",
                    )
                )
        return doomed

    def start(self) -> CoordinatorWatch:
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
