"""Revocation reaching the gateway within seconds, without restart (SPEC A6, B5, C1; issue 18).

The gateway is a separate process from the coordinator, so what the coordinator decides (a ban, a
revoked session or refresh family, a job whose token is dead) is read from the coordinator's database:
on every request (:class:`Standing`) and, for what is already open — websockets, keep-alive HTTP
connections — by a watcher that closes them when their node or session stops being in good standing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.poller import Poller
from cyxwiz.transport.identity import PeerIdentity

#: Node states in which a node is cut off everywhere.
CUT_OFF = frozenset({"banned", "revoked"})


class Standing(Protocol):
    """What the gateway asks the coordinator's records (a :class:`StoreStanding` over its database)."""

    def is_session_revoked(self, session_id: str) -> bool: ...

    def node_status(self, node_id: str) -> str | None: ...

    def job_status(self, job_id: str) -> str | None: ...

    def job_refusal(self, job_id: str, *, node_id: str, grant_id: str | None = None) -> str | None:
        """Why ``node_id`` may no longer act on ``job_id`` (the job was re-assigned to another node, or the
        grant — a job token's jti — was revoked), or None (issue 21, C3)."""
        ...

    def cut_off_peers(self) -> set[str]: ...


class StoreStanding:
    """:class:`Standing` over a :class:`~cyxwiz.coordinator.store.CoordinatorStore`."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def is_session_revoked(self, session_id: str) -> bool:
        return bool(self.store.is_session_revoked(session_id))

    def node_status(self, node_id: str) -> str | None:
        from cyxwiz.errors import NotFoundError

        try:
            return str(self.store.node(node_id).status)
        except NotFoundError:
            return None

    def job_status(self, job_id: str) -> str | None:
        from cyxwiz.errors import NotFoundError

        try:
            return str(self.store.job(job_id).status)
        except NotFoundError:
            return None

    def job_refusal(self, job_id: str, *, node_id: str, grant_id: str | None = None) -> str | None:
        from cyxwiz.errors import NotFoundError

        try:
            job = self.store.job(job_id)
        except NotFoundError:
            return None  # a run naming no job of ours: the other rules decide
        if job.node_id is not None and job.node_id != node_id:
            return "job is dead: the job was re-assigned to another node, only its current node may act on it"
        refusal: str | None = self.store.grant_refusal(grant_id, job=job)
        return refusal

    def cut_off_peers(self) -> set[str]:
        """PeerIDs of cut-off nodes, earlier (renewed-from) certificates included: they are the node too."""
        doomed = [n.node_id for n in self.store.list_nodes() if n.status in CUT_OFF]
        return {peer for node_id in doomed for peer in self.store.peer_ids_of(node_id)}


@dataclass
class _Live:
    node_id: str
    session_id: str | None
    loop: asyncio.AbstractEventLoop
    closed: asyncio.Event


@dataclass
class LiveChannels:
    """Open websockets by node and session, so a revocation can close them from the watcher thread."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _live: dict[int, _Live] = field(default_factory=dict)

    def open(self, node_id: str, session_id: str | None) -> tuple[int, asyncio.Event]:
        closed = asyncio.Event()
        entry = _Live(node_id, session_id, asyncio.get_running_loop(), closed)
        with self._lock:
            self._live[id(entry)] = entry
        return id(entry), closed

    def close(self, key: int) -> None:
        with self._lock:
            self._live.pop(key, None)

    def entries(self) -> list[_Live]:
        with self._lock:
            return list(self._live.values())


class RevocationWatch:
    """Polls :class:`Standing` and closes what a revocation took away (a daemon thread)."""

    def __init__(
        self,
        *,
        standing: Standing,
        live: LiveChannels,
        close_peers: Callable[[Callable[[PeerIdentity], bool]], list[PeerIdentity]] | None,
        audit: AuditSink | None,
        interval: float = 0.5,
    ) -> None:
        self.standing, self.live, self.close_peers, self.audit = standing, live, close_peers, audit
        self.interval = interval
        self._poller = Poller(
            check=self.check_now, interval=lambda: self.interval, name="cyxwiz-gateway-revocations"
        )

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    def check_now(self) -> int:
        """Close websockets of revoked sessions or cut-off nodes and connections of cut-off nodes."""
        closed = 0
        for entry in self.live.entries():
            status = self.standing.node_status(entry.node_id)
            revoked = entry.session_id is not None and self.standing.is_session_revoked(entry.session_id)
            if status in CUT_OFF or status is None or revoked:
                self.live.close(id(entry))
                if not entry.loop.is_closed():
                    entry.loop.call_soon_threadsafe(entry.closed.set)
                closed += 1
                self._record(
                    entry.node_id,
                    f"websocket closed: node {status}"
                    if not revoked
                    else "websocket closed: session revoked",
                )
        if self.close_peers is not None:
            doomed = self.standing.cut_off_peers()
            if doomed:
                for peer in self.close_peers(lambda p: p.peer_id in doomed):
                    closed += 1
                    self._record(peer.peer_id, "connection closed: node cut off")
        return closed

    def _record(self, target: str, reason: str) -> None:
        if self.audit is not None:
            self.audit.record(
                ev.revocation(
                    actor_id="gateway",
                    actor_type=ev.ActorType.SERVICE,
                    kind="connection",
                    target=target,
                    reason=reason,
                )
            )
