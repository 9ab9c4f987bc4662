"""The federation's trust policy in force, reloaded without a restart (SPEC A7, A6 "beyond", C1).

:class:`Federation` holds the :class:`~cyxwiz.pki.trust_policy.TrustPolicy` and each organization's CRLs.
:meth:`Federation.check_now` (the transport's watcher calls it every poll) reloads the policy file when it
changed — an organization removed from it is refused from the next decision on — and each organization's
CRL file independently, and re-evaluates staleness. It returns True whenever the rules in force changed,
and the listener then re-checks its live connections. A policy file that no longer parses keeps the
previous policy in force and raises an alert; a bad CRL file refuses only its own organization's nodes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from cyxwiz.errors import CyxwizError, PKIError
from cyxwiz.pki._files import PUBLIC_MODE, write_atomic
from cyxwiz.pki.trust_policy import Decision, OrgCRLs, TrustPolicy, load_org_crls

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
Alert = Callable[[str, str], None]
Stat = tuple[int, int, int] | None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stat(path: Path | None) -> Stat:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Federation:
    """A trust policy file plus one CRL file per organization, each hot-reloaded on its own."""

    def __init__(self, *, policy_path: Path, clock: Clock = _utcnow, on_alert: Alert | None = None) -> None:
        self.policy_path = Path(policy_path)
        self.clock = clock
        self.on_alert = on_alert
        self._lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self._policy = TrustPolicy.load(self.policy_path)
        self._policy_stat = _stat(self.policy_path)
        self._crls: dict[str, OrgCRLs] = self._policy.load_crls()
        self._crl_stats = {o.name: _stat(o.crl_path) for o in self._policy.organizations}
        self._health = self._current_health()

    @property
    def policy(self) -> TrustPolicy:
        return self._policy

    def crls(self) -> dict[str, OrgCRLs]:
        with self._lock:
            return dict(self._crls)

    def decide(self, cert: x509.Certificate, *, purpose: str | None = None) -> Decision:
        """Accept ``cert`` under the rules in force, or raise the precise refusal (TrustPolicyError, ...)."""
        with self._lock:
            policy, crls = self._policy, dict(self._crls)
        return policy.evaluate(cert, crls=crls, at=self.clock(), purpose=purpose)

    def refusal(self, cert: x509.Certificate) -> str | None:
        """Why the federation refuses this peer (the rule named), or None."""
        try:
            self.decide(cert)
        except PKIError as exc:
            return f"{exc.message} [rule {exc.rule}]" if exc.rule else exc.message
        except Exception as exc:  # a certificate the evaluation cannot even read: fail closed
            log.warning("trust policy evaluation failed: %s", type(exc).__name__)
            return f"trust policy evaluation failed ({type(exc).__name__}) [rule A7]"
        return None

    def trust_pem(self) -> bytes:
        """Every organization's CAs in force, as PEM: what the listener hands OpenSSL (rebuilt on change)."""
        with self._lock:
            return self._policy.bundle_pem()

    def write_bundle(self, path: Path) -> Path:
        """All organizations' CAs in one PEM file: the trust store the TLS listener hands OpenSSL."""
        return write_atomic(path, self._policy.bundle_pem(), mode=PUBLIC_MODE, overwrite=True)

    # --- reloading ------------------------------------------------------------------------------

    def check_now(self) -> bool:
        """Reload what changed on disk and re-evaluate staleness; True when the rules in force changed."""
        changed = False
        # Files are parsed outside ``_lock`` (a large CRL takes a second): handshakes keep deciding under
        # the rules in force until the new ones are swapped in whole.
        with self._reload_lock:
            stat = _stat(self.policy_path)
            if stat != self._policy_stat:
                self._policy_stat = stat
                changed |= self._reload_policy()
            for org in self._policy.organizations:
                stat = _stat(org.crl_path)
                if stat != self._crl_stats.get(org.name):
                    self._crl_stats[org.name] = stat
                    fresh = load_org_crls(org, previous=self._crls.get(org.name))
                    if fresh.error is not None:
                        self._alert("crl.rejected", f"organization {org.name!r}: {fresh.error}")
                    with self._lock:
                        self._crls = {**self._crls, org.name: fresh}
                    changed = True
            health = self._current_health()
            if health != self._health:
                for name, reason in health.items():
                    if reason is not None and self._health.get(name) != reason:
                        self._alert("crl.stale", f"organization {name!r} refused until fixed: {reason}")
                self._health = health
                changed = True
        return changed

    def _reload_policy(self) -> bool:
        try:
            policy = TrustPolicy.load(self.policy_path)
        except CyxwizError as exc:
            self._alert("trust-policy.rejected", f"previous policy stays in force: {exc}")
            return False
        before = {o.name for o in self._policy.organizations}
        after = {o.name for o in policy.organizations}
        crls = policy.load_crls(previous=self._crls)
        with self._lock:
            self._policy, self._crls = policy, crls
        self._crl_stats = {o.name: _stat(o.crl_path) for o in policy.organizations}
        log.info(
            "trust policy reloaded: organizations %s (removed %s, added %s)",
            sorted(after),
            sorted(before - after),
            sorted(after - before),
        )
        return True

    def _current_health(self) -> dict[str, str | None]:
        now = self.clock()
        return {name: state.stale_reason(now) for name, state in self._crls.items()}

    def _alert(self, action: str, message: str) -> None:
        log.warning("%s: %s", action, message)
        if self.on_alert is not None:
            self.on_alert(action, message)
