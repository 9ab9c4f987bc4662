"""jti replay cache for one-shot tokens (SPEC B5).

A jti only needs remembering until its token expires (after that the ``exp`` check refuses it anyway), so
entries carry the token's ``exp`` and are evicted once it has passed: the cache stays bounded by the
number of tokens alive at one time.
"""

from __future__ import annotations

import heapq
import threading
from datetime import datetime
from typing import Protocol

from cyxwiz.errors import RateLimitError


class ReplayCache(Protocol):
    def remember(self, jti: str, *, expires_at: datetime, now: datetime) -> bool:
        """Atomically record ``jti``; True the first time, False when it was already seen (a replay)."""
        ...

    def purge(self, *, now: datetime) -> int:
        """Forget entries whose token has expired; return how many."""
        ...


class InMemoryReplayCache:
    """Process-local cache (one verifier process). Use :class:`cyxwiz.tokens.sql.SqlTokenStore` when
    several processes verify the same tokens."""

    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, jti: str, *, expires_at: datetime, now: datetime) -> bool:
        now_ts = now.timestamp()
        with self._lock:
            self._evict(now_ts)
            if jti in self._seen:
                return False
            if len(self._seen) >= self.max_entries:
                # Fail closed: forgetting a live jti early would let it be replayed.
                raise RateLimitError("replay cache is full", field="jti", rule="B5")
            exp = expires_at.timestamp()
            self._seen[jti] = exp
            heapq.heappush(self._expiry, (exp, jti))
            return True

    def purge(self, *, now: datetime) -> int:
        with self._lock:
            return self._evict(now.timestamp())

    def _evict(self, now_ts: float) -> int:
        n = 0
        while self._expiry and self._expiry[0][0] < now_ts:
            _, jti = heapq.heappop(self._expiry)
            self._seen.pop(jti, None)
            n += 1
        return n
