"""A running coordinator or gateway follows key-ring rotation without restart (SPEC B4; issue 18).

The scheduled rotation flow writes the ring directory from another process; :class:`KeyRingReloader`
watches its ``ring.json`` and swaps the keys into the ring every issuer and verifier of this process holds
(:meth:`KeyRing.adopt`): a new signing key signs from the next token on, a pruned key stops verifying.
A ring that fails to load keeps the keys in force and is retried (a half-written rotation is not a ring).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cyxwiz.errors import CyxwizError
from cyxwiz.poller import Poller
from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing

log = logging.getLogger(__name__)


class KeyRingReloader:
    """Polls a key-ring directory; :meth:`check_now` reloads when ``ring.json`` changed."""

    def __init__(self, *, ring: KeyRing, path: Path, interval: float = 1.0) -> None:
        self.ring = ring
        self.store = DirKeyRingStore(path)
        self.interval = interval
        self._stamp = self._stat()
        self._poller = Poller(
            check=self.check_now, interval=lambda: self.interval, name="cyxwiz-keyring-reload"
        )

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.store.path / "ring.json")
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check_now(self) -> bool:
        """Adopt the ring on disk if it changed; True when it did."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            loaded = self.store.load()
        except (CyxwizError, OSError, ValueError) as exc:
            log.warning("key ring at %s not reloaded (kept the keys in force): %s", self.store.path, exc)
            return False
        self._stamp = stamp
        self.ring.adopt(loaded)
        log.info("key ring reloaded from %s: %d keys", self.store.path, len(loaded.all_keys()))
        return True

    def start(self) -> KeyRingReloader:
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
