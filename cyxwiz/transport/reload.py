"""Server TLS with CRL hot reload and revocation of live connections (SPEC A6 "beyond", I: MITM, theft).

Revocation is checked by us, not by OpenSSL: OpenSSL re-verifies the CRL's signature over its whole body on
every handshake, so a 100 000-entry CRL made each handshake about twice as slow. Here the CRL is validated
once when it is loaded (:mod:`cyxwiz.transport.crl`) and every handshake looks the leaf's (issuer, serial) up
in a set, right after the handshake and before one byte of the connection reaches the application. A leaf
whose issuer has no CRL in force is refused too, as OpenSSL's ``VERIFY_CRL_CHECK_LEAF`` would.

A new CRL therefore applies to the next handshake without restarting or re-binding anything, and
connections of peers revoked by it are aborted through the :class:`ConnectionRegistry`.

A CRL past its nextUpdate follows ``stale_policy``: "fail-closed" (default) refuses every handshake (in the
listener's ``sni_callback``, which runs on every handshake, also without SNI) until a fresh CRL arrives;
"fail-open" keeps serving and keeps refusing the certificates the last CRL named. Either way an alert event
is audited once per transition.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.errors import ConfigError, CRLError, CyxwizError
from cyxwiz.transport.connections import ConnectionRegistry
from cyxwiz.transport.crl import CRLSnapshot, load_trusted_cas, parse_crl
from cyxwiz.transport.identity import PeerIdentity
from cyxwiz.transport.tls import server_context

log = logging.getLogger(__name__)

StalePolicy = Literal["fail-closed", "fail-open"]
Clock = Callable[[], datetime]


class PeerPolicy(Protocol):
    """A rule on verified peers beyond chain and CRL, e.g. :class:`cyxwiz.pki.federation.Federation`."""

    def refusal(self, cert: x509.Certificate) -> str | None: ...

    def check_now(self) -> bool:
        """Reload; True when the rules in force changed (live connections are then re-checked)."""
        ...

    def trust_pem(self) -> bytes:
        """The CAs handshakes may chain to under the rules in force (PEM), beside the listener's bundle."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ServerTLS:
    """The TLS side of an mTLS listener: current context, CRL state, watcher, live connections."""

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        trust_bundle: Path,
        crl: Path | None,
        require_client_cert: bool = True,
        stale_policy: StalePolicy = "fail-closed",
        audit: AuditSink | None = None,
        clock: Clock = _utcnow,
        poll_interval: float = 0.5,
        policy: PeerPolicy | None = None,
    ) -> None:
        if stale_policy not in ("fail-closed", "fail-open"):
            raise ConfigError("must be fail-closed or fail-open", field="stale_policy", rule="A6")
        self.cert, self.key, self.trust_bundle, self.crl_path = cert, key, trust_bundle, crl
        self.require_client_cert = require_client_cert
        self.stale_policy: StalePolicy = stale_policy
        self.audit = audit
        self.clock = clock
        self.poll_interval = poll_interval
        #: A federation trust policy checked on the verified peer after the CRL check (A7, C1).
        self.policy = policy
        if policy is not None and getattr(policy, "on_alert", False) is None:
            # Its reload alerts (bad policy edit, an organization's CRL stale) become audit events here.
            setattr(policy, "on_alert", self._alert)  # noqa: B010 - PeerPolicy does not declare it
        self.connections = ConnectionRegistry()
        self._trusted = load_trusted_cas(trust_bundle)
        self._lock = threading.RLock()
        self._stat: tuple[int, int, int] | None = None
        self._stale = False
        self._snapshot: CRLSnapshot | None = None
        self._revoked_listeners: list[Callable[[list[PeerIdentity]], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if crl is not None:
            self._snapshot = parse_crl(crl.read_bytes(), trusted=self._trusted, source=str(crl))
            self._stat = self._file_stat()
        self._policy_cas = policy.trust_pem() if policy is not None else b""
        self.context = self._build()
        self.context.sni_callback = self._on_handshake
        #: The context handshakes run under: ``context`` until the policy's CAs change (organization added
        #: or removed at run time), then a rebuilt one that ``_on_handshake`` switches each connection to.
        self._live = self.context
        self._check_stale()

    # --- contexts ---------------------------------------------------------------------------------

    def _build(self) -> ssl.SSLContext:
        # No CRL is handed to OpenSSL: revocation is looked up after the handshake (module docstring).
        ctx = server_context(
            cert=self.cert,
            key=self.key,
            trust_bundle=self.trust_bundle,
            crl=None,
            require_client_cert=self.require_client_cert,
        )
        if self._policy_cas:
            # Every organization the policy lists, as it stands now: OpenSSL must chain a new
            # organization's nodes before the policy is asked about them (A7).
            ctx.load_verify_locations(cadata=self._policy_cas.decode("ascii"))
        return ctx

    def _on_handshake(
        self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        with self._lock:
            if self._stale and self.stale_policy == "fail-closed":
                return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
            live = self._live
        if live is not ctx:
            # The trust store is the context's (SSL_set_SSL_CTX): this handshake verifies the client
            # against the CAs of the policy now in force, without touching the listener.
            sslobj.context = live
        return None

    @property
    def trusted_cas(self) -> list[x509.Certificate]:
        """The CA certificates of the trust bundle (what a CRL's revoked CAs are looked up in)."""
        return list(self._trusted)

    @property
    def snapshot(self) -> CRLSnapshot | None:
        return self._snapshot

    @property
    def stale(self) -> bool:
        return self._stale

    def refusal(self, peer: PeerIdentity) -> str | None:
        """Why this peer's certificate must be refused under the CRL in force, or None (SPEC A6).

        The wording is OpenSSL's, so audit queries written against handshake refusals keep working.
        """
        snap = self._snapshot
        reason = snap.chain_refusal(peer.certificate, self._trusted) if snap is not None else None
        if reason is None and self.policy is not None:
            reason = self.policy.refusal(peer.certificate)
        return reason

    def on_revoked(self, callback: Callable[[list[PeerIdentity]], None]) -> None:
        """Call ``callback`` with the peers whose connections a new CRL closed (e.g. to kill sessions)."""
        self._revoked_listeners.append(callback)

    # --- reloading --------------------------------------------------------------------------------

    def _file_stat(self) -> tuple[int, int, int] | None:
        assert self.crl_path is not None
        try:
            st = os.stat(self.crl_path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check_now(self) -> bool:
        """Reload the CRL file if it changed, re-evaluate staleness; True when a new CRL took effect."""
        changed = False
        if self.crl_path is not None:
            stat = self._file_stat()
            if stat is not None and stat != self._stat:
                try:
                    changed = self._install(self.crl_path.read_bytes(), source=str(self.crl_path))
                    self._stat = stat
                except CRLError as exc:
                    # Keep the CRL in force; a half-written file is retried on the next poll.
                    self._stat = stat
                    self._alert("crl.rejected", str(exc))
        self._check_stale()
        self._close_expired()
        if self.policy is not None and self.policy.check_now():
            self._retrust(self.policy.trust_pem())
            self._close_refused_by_policy()
            changed = True
        return changed

    def _close_expired(self) -> None:
        """A certificate is checked at the handshake; a connection kept alive past its expiry would keep
        the identity beyond it. Such connections are closed (the node reconnects under its renewed
        certificate; short lifetimes mean something only if they end, A7)."""
        now = self.clock()
        self._close_connections(
            lambda p: p.certificate.not_valid_after_utc <= now,
            reason="connection closed: certificate expired",
            notify=False,  # an expiry is no revocation: the node comes back under its renewed certificate
        )

    def _retrust(self, cas: bytes) -> None:
        """A policy whose CAs changed gets a context trusting exactly them, for the next handshakes."""
        if cas == self._policy_cas:
            return
        self._policy_cas = cas
        try:
            fresh = self._build()
        except (ssl.SSLError, ValueError, CyxwizError) as exc:
            # Cannot happen for a policy that loaded (its CAs parsed); keep serving under the old store.
            self._alert("trust-policy.rejected", f"trust store not rebuilt: {type(exc).__name__}")
            return
        with self._lock:
            self._live = fresh
        log.info("trust store rebuilt from the trust policy now in force")

    def _close_refused_by_policy(self) -> None:
        policy = self.policy
        assert policy is not None
        self._close_connections(
            lambda p: policy.refusal(p.certificate) is not None,
            reason="connection closed: refused by the trust policy now in force",
        )

    def apply_crl(self, data: bytes) -> CRLSnapshot:
        """A pushed CRL: validate, persist atomically to the CRL path, take effect now."""
        if self.crl_path is None and self.policy is not None:
            return self._close_revoked_by(data)
        if self.crl_path is None:
            raise ConfigError("this listener has no CRL path to update", field="crl", rule="A6")
        self._install(data, source="pushed CRL")
        fd, tmp = tempfile.mkstemp(dir=self.crl_path.parent, prefix=".crl-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.crl_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stat = self._file_stat()
        self._check_stale()
        assert self._snapshot is not None
        return self._snapshot

    def _close_revoked_by(self, data: bytes) -> CRLSnapshot:
        """Under a trust policy handshakes follow each organization's CRL file (the CA writes its own);
        a CRL the control plane's CA pushes (admin revoke) still ends the live connections of the
        certificates it names, now, without a single CRL taking over the listener."""
        snapshot = parse_crl(data, trusted=self._trusted, source="pushed CRL")
        self._close_connections(
            lambda p: snapshot.is_revoked(p.certificate),
            reason="connection closed: certificate revoked by the control plane's CA",
        )
        return snapshot

    def _install(self, data: bytes, *, source: str) -> bool:
        with self._lock:
            previous = self._snapshot
            if previous is not None and previous.data == data:
                return False
            snapshot = parse_crl(data, trusted=self._trusted, previous=previous, source=source)
            self._snapshot = snapshot
            self._stale = False
        newly = snapshot.revoked - (previous.revoked if previous else frozenset())
        log.info("CRL applied from %s: %d revoked (%d new)", source, len(snapshot.revoked), len(newly))
        self._close_connections(
            lambda p: snapshot.chain_refusal(p.certificate, self._trusted) is not None,
            reason="connection closed: certificate revoked by new CRL",
        )
        return True

    def _close_connections(
        self, revoked: Callable[[PeerIdentity], bool], *, reason: str, notify: bool = True
    ) -> None:
        """Close every live connection whose certificate ``revoked`` names and audit each; with ``notify``
        the revocation listeners (websockets, sessions) hear of the peers closed."""
        closed = self.connections.close_where(revoked)
        for peer in closed:
            self._record(
                ev.revocation(
                    actor_id="transport",
                    actor_type=ev.ActorType.SYSTEM,
                    kind="certificate",
                    target=peer.peer_id,
                    reason=reason,
                )
            )
        if closed and notify:
            for callback in list(self._revoked_listeners):
                callback(closed)

    def _check_stale(self) -> None:
        snap = self._snapshot
        stale = snap is not None and snap.is_stale(self.clock())
        with self._lock:
            was, self._stale = self._stale, stale
        if stale and not was:
            assert snap is not None
            self._alert(
                "crl.stale",
                f"CRL past nextUpdate {snap.next_update}; policy {self.stale_policy}",
            )

    def _alert(self, action: str, message: str) -> None:
        log.warning("%s: %s", action, message)
        self._record(
            ev.make_event(
                event_type=ev.EventType.CONFIGURATION,
                actor_id="transport",
                actor_type=ev.ActorType.SYSTEM,
                resource=f"crl:{self.crl_path}",
                action=action,
                outcome=ev.Outcome.ERROR,
                details={"alert": True, "message": message, "policy": self.stale_policy},
            )
        )

    def _record(self, event: ev.SecurityEvent) -> None:
        if self.audit is not None:
            self.audit.record(event)

    # --- watcher ----------------------------------------------------------------------------------

    def start_watching(self) -> None:
        if self._thread is not None:
            return  # (also without a CRL: connections whose certificate expired are closed)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="cyxwiz-crl-watch", daemon=True)
        self._thread.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.check_now()
            except Exception:  # the watcher must survive anything a bad file throws at it
                log.exception("CRL watcher iteration failed")
