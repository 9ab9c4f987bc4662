"""Live TLS connections of a listener, by transport, so a revocation can close them (SPEC A6, A7)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cyxwiz.transport.identity import PeerIdentity


@dataclass
class _Conn:
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    peer: PeerIdentity | None
    ip: str | None


class ConnectionRegistry:
    """Live TLS connections by transport, so a revocation can close them (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}

    def add(
        self,
        transport: asyncio.Transport,
        peer: PeerIdentity | None,
        ip: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        with self._lock:
            self._conns[id(transport)] = _Conn(transport, loop, peer, ip)

    def remove(self, transport: asyncio.BaseTransport) -> _Conn | None:
        with self._lock:
            return self._conns.pop(id(transport), None)

    def peer(self, transport: asyncio.BaseTransport) -> PeerIdentity | None:
        with self._lock:
            conn = self._conns.get(id(transport))
            return conn.peer if conn is not None and conn.transport is transport else None

    def count(self, ip: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self._conns.values() if ip is None or c.ip == ip)

    def peers(self) -> list[PeerIdentity]:
        with self._lock:
            return [c.peer for c in self._conns.values() if c.peer is not None]

    def close_where(self, predicate: Callable[[PeerIdentity], bool]) -> list[PeerIdentity]:
        """Abort every connection whose peer matches; returns the peers closed."""
        with self._lock:
            doomed = [c for c in self._conns.values() if c.peer is not None and predicate(c.peer)]
        for conn in doomed:
            # abort(), not close(): a revoked peer gets no graceful flush of pending responses.
            if conn.loop.is_closed():
                continue
            conn.loop.call_soon_threadsafe(conn.transport.abort)
        return [c.peer for c in doomed if c.peer is not None]


__all__ = ["ConnectionRegistry"]
