"""One daemon thread that runs a check every few seconds: how revocations and key rotations reach a
running process without a restart (A6, B4). A failed round is logged and the next one runs, so a
database or file hiccup never ends the watch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Poller:
    def __init__(self, *, check: Callable[[], object], interval: Callable[[], float], name: str) -> None:
        self._check, self._interval, self.name = check, interval, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval()):
            try:
                self._check()
            except Exception:
                log.exception("%s: round failed", self.name)
