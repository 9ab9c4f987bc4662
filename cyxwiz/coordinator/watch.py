"""What changes under a running coordinator reaches it within a second (SPEC A6, B4, B5; issue 18).

A rotated key ring written by the scheduled flow is adopted (:class:`~cyxwiz.tokens.reload.KeyRingReloader`);
a new CRL — a revoked user or node certificate — revokes every session opened with that certificate, so
its refresh family dies with it even when its holder is not connected.
"""

from __future__ import annotations

import logging
import threading

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.tokens.reload import KeyRingReloader
from cyxwiz.transport.crl import CRLSnapshot
from cyxwiz.transport.reload import ServerTLS

log = logging.getLogger(__name__)


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_now(self) -> list[str]:
        """Reload the ring if rotated; revoke the sessions of certificates the CRL in force names."""
        if self.reloader is not None:
            self.reloader.check_now()
        snapshot = self.tls.snapshot
        if snapshot is None or snapshot is self._seen:
            return []
        self._seen = snapshot
        doomed = self.store.revoke_sessions_of_certs(snapshot.revoked)
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
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cyxwiz-coordinator-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_now()
            except Exception:  # a database hiccup must not end the watch
                log.exception("coordinator watch iteration failed")
