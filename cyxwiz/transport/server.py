"""An mTLS ASGI server: uvicorn's HTTP/WebSocket protocols with TLS done by us (SPEC D1, A5, A6, I).

uvicorn neither checks CRLs nor hands the client certificate to the app, and asyncio's own TLS listener
drops handshake failures silently. So uvicorn listens on plain TCP and our protocol class upgrades each
connection with ``loop.start_tls`` using :class:`~cyxwiz.transport.reload.ServerTLS`'s hot-reloading
context. That gives us, per connection and before any HTTP byte is parsed: the handshake failure reason
(audited as a certificate rejection), the Ed25519-only check, a per-IP connection limit, a bounded pool
for connections without a client certificate, a deadline for each request head (slow-loris), registration
for revocation kills, and the verified peer in ``scope["extensions"]["tls"]`` (the ASGI TLS extension,
plus ``cyxwiz_peer``: a :class:`~cyxwiz.transport.identity.PeerIdentity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.errors import CyxwizError
from cyxwiz.transport.identity import SCOPE_PEER_KEY, PeerIdentity
from cyxwiz.transport.reload import ServerTLS

log = logging.getLogger(__name__)

ASGIApp = Any  # the ASGI callable; typed loosely because starlette/fastapi/our proxies all qualify


@dataclass
class _Shared:
    """Listener-wide state the per-connection protocol objects reach through their class."""

    tls: ServerTLS
    audit: AuditSink | None
    handshake_timeout: float
    max_connections_per_ip: int
    header_timeout: float = 10.0
    max_anonymous: int = 256
    anonymous: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit_anonymous(self) -> bool:
        """A connection without a client certificate takes one of the anonymous slots, if one is free."""
        with self.lock:
            if self.anonymous >= self.max_anonymous:
                return False
            self.anonymous += 1
            return True

    def release_anonymous(self) -> None:
        with self.lock:
            self.anonymous = max(0, self.anonymous - 1)

    def admit(self, ip: str) -> bool:
        with self.lock:
            total = self.pending.get(ip, 0) + self.tls.connections.count(ip)
            if total >= self.max_connections_per_ip:
                return False
            self.pending[ip] = self.pending.get(ip, 0) + 1
            return True

    def handshake_done(self, ip: str) -> None:
        with self.lock:
            left = self.pending.get(ip, 1) - 1
            if left <= 0:
                self.pending.pop(ip, None)
            else:
                self.pending[ip] = left

    def record(self, event: ev.SecurityEvent) -> None:
        if self.audit is not None:
            self.audit.record(event)


def _verify_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return type(exc).__name__


def tls_extension(peer: PeerIdentity | None, ssl_object: ssl.SSLObject | None) -> dict[str, Any]:
    """The ASGI ``tls`` scope extension for one connection."""
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = [peer.certificate.public_bytes(Encoding.PEM).decode()] if peer is not None else []
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": peer.subject if peer is not None else None,
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": None,
        SCOPE_PEER_KEY: peer,
        "cyxwiz_cipher": cipher[0] if (cipher := ssl_object.cipher() if ssl_object else None) else None,
    }


def _with_tls(app: ASGIApp, extension: dict[str, Any]) -> ASGIApp:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
        await app(scope, receive, send)

    return wrapped


class MTLSHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol, preceded by our TLS handshake on the raw TCP transport."""

    shared: ClassVar[_Shared]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Not one byte reaches h11 before the handshake: stop reading now (the reader is not even added).
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Responses go out as several TLS records; without NODELAY, Nagle + delayed ACK add ~40 ms.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "0.0.0.0"  # noqa: S104 (a label, not a bind address)
        if not self.shared.admit(ip):
            self.shared.record(
                ev.access_decision(
                    actor_id=ip,
                    actor_type=ev.ActorType.ANONYMOUS,
                    resource="transport:connection",
                    action="connect",
                    allowed=False,
                    reason="per-IP connection limit",
                    ip_address=ip,
                )
            )
            self._cyx_refused = True
            transport.abort()
            return
        self._cyx_early = []
        task = self.loop.create_task(self._handshake(transport, ip))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handshake(self, raw: asyncio.Transport, ip: str) -> None:
        shared = self.shared
        try:
            tls_transport = await self.loop.start_tls(
                raw,
                self,
                shared.tls.context,
                server_side=True,
                ssl_handshake_timeout=shared.handshake_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
            shared.handshake_done(ip)
            reason = _verify_reason(exc)
            log.info("TLS handshake from %s refused: %s", ip, reason)
            shared.record(ev.certificate_rejected(reason=reason, ip_address=ip, rule="D1/A3/A6"))
            raw.abort()
            return
        shared.handshake_done(ip)
        if tls_transport is None:
            return
        ssl_object = tls_transport.get_extra_info("ssl_object")
        peer: PeerIdentity | None = None
        try:
            if ssl_object is not None and ssl_object.getpeercert(binary_form=True):
                peer = PeerIdentity.from_ssl_object(ssl_object)
        except CyxwizError as exc:
            shared.record(ev.certificate_rejected(reason=exc.message, ip_address=ip, rule=exc.rule))
            tls_transport.abort()
            return
        registry = shared.tls.connections
        # Registered first, checked second: a CRL installed in between either sees this connection in the
        # registry (and aborts it) or is already in force for the check below.
        registry.add(tls_transport, peer, ip, self.loop)
        refusal = shared.tls.refusal(peer) if peer is not None else None
        if refusal is not None:
            registry.remove(tls_transport)
            log.info("TLS peer from %s refused: %s", ip, refusal)
            shared.record(ev.certificate_rejected(reason=refusal, ip_address=ip, rule="A6"))
            tls_transport.abort()
            return
        if self._cyx_lost:
            registry.remove(tls_transport)
            return
        if peer is None:
            # Connections without a certificate (users may come without one) share a bounded pool, so a
            # flood of them cannot take the slots that certified nodes need.
            if not shared.admit_anonymous():
                registry.remove(tls_transport)
                log.info("connection from %s refused: anonymous connection limit", ip)
                tls_transport.abort()
                return
            self._cyx_anonymous = True
        self.app = _with_tls(self.app, tls_extension(peer, ssl_object))
        super().connection_made(tls_transport)
        self._cyx_arm_head_timer()
        early, self._cyx_early = self._cyx_early, None
        if early:
            self._cyx_feed(b"".join(early))

    # TLS 1.3 clients send their first request right behind Finished, so sslproto may deliver it before
    # the handshake coroutine resumes: hold it until h11 is set up.
    _cyx_early: list[bytes] | None = None
    _cyx_lost = False
    _cyx_refused = False  # refused at the per-IP cap: h11 never set up
    _cyx_anonymous = False
    _cyx_head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._cyx_early is not None:
            self._cyx_early.append(data)
            return
        self._cyx_feed(data)

    # Slow-loris: uvicorn starts no timer before a connection's first request, and cancels its keep-alive
    # timer at the first byte of the next one, so a client that trickles a request head (or sends nothing
    # after the handshake) held its connection forever. Here every request head must arrive whole within
    # ``header_timeout`` of the handshake (first request) or of its own first byte (later ones).
    def _cyx_feed(self, data: bytes) -> None:
        if not self._cyx_in_request():
            self._cyx_arm_head_timer()
        super().data_received(data)
        if self._cyx_in_request():
            self._cyx_disarm_head_timer()
        elif self.transport is not None and self.transport.get_protocol() is not self:
            # Upgraded to a websocket: the connection (and its anonymous slot) now belongs to that protocol.
            self._cyx_disarm_head_timer()
            upgraded = self.transport.get_protocol()
            if self._cyx_anonymous and isinstance(upgraded, MTLSWebSocketProtocol):
                self._cyx_anonymous, upgraded.cyx_anonymous = False, True

    def _cyx_in_request(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def _cyx_arm_head_timer(self) -> None:
        if self._cyx_head_timer is None:
            self._cyx_head_timer = self.loop.call_later(self.shared.header_timeout, self._cyx_head_expired)

    def _cyx_disarm_head_timer(self) -> None:
        if self._cyx_head_timer is not None:
            self._cyx_head_timer.cancel()
            self._cyx_head_timer = None

    def _cyx_head_expired(self) -> None:
        self._cyx_head_timer = None
        transport = self.transport
        if self._cyx_in_request() or transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        log.info(
            "connection from %s closed: no complete request head within %.0f s",
            peer,
            self.shared.header_timeout,
        )
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._cyx_early is not None:  # lost before h11 ever saw the connection
            self._cyx_lost = True
            return
        if self._cyx_refused:
            # Refused at the per-IP cap before the handshake began: h11 never saw it, nothing to undo
            # (handing it to h11 raised an AttributeError per refused connection, a log flood under abuse).
            return
        self._cyx_disarm_head_timer()
        if self._cyx_anonymous:
            self._cyx_anonymous = False
            self.shared.release_anonymous()
        if self.transport is not None:
            self.shared.tls.connections.remove(self.transport)
        super().connection_lost(exc)


class MTLSWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol on a connection our HTTP protocol already verified."""

    shared: ClassVar[_Shared]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        peer = self.shared.tls.connections.peer(transport)
        self.app = _with_tls(self.app, tls_extension(peer, ssl_object))
        super().connection_made(transport)

    #: Set by the HTTP protocol when it hands over a connection that holds an anonymous slot.
    cyx_anonymous = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cyx_anonymous:
            self.cyx_anonymous = False
            self.shared.release_anonymous()
        self.shared.tls.connections.remove(self.transport)
        super().connection_lost(exc)


def protocol_classes(shared: _Shared) -> tuple[type[MTLSHttpProtocol], type[MTLSWebSocketProtocol]]:
    """Per-listener subclasses: uvicorn instantiates the class, so the listener state rides on it."""
    http_cls = type("BoundMTLSHttpProtocol", (MTLSHttpProtocol,), {"shared": shared})
    ws_cls = type("BoundMTLSWebSocketProtocol", (MTLSWebSocketProtocol,), {"shared": shared})
    http_cls.ws_protocol_class = ws_cls  # type: ignore[attr-defined]
    return http_cls, ws_cls


class MTLSServer:
    """Serve an ASGI app over mTLS on one socket, in a background thread or in the foreground."""

    def __init__(
        self,
        *,
        app: ASGIApp,
        tls: ServerTLS,
        host: str = "127.0.0.1",
        port: int = 0,
        audit: AuditSink | None = None,
        handshake_timeout: float = 10.0,
        max_connections_per_ip: int = 64,
        limit_concurrency: int | None = 1000,
        log_level: str = "warning",
        header_timeout: float = 10.0,
        max_anonymous_connections: int = 256,
    ) -> None:
        self.tls = tls
        self._shared = _Shared(
            tls=tls,
            audit=audit if audit is not None else tls.audit,
            handshake_timeout=handshake_timeout,
            max_connections_per_ip=max_connections_per_ip,
            header_timeout=header_timeout,
            max_anonymous=max_anonymous_connections,
        )
        http_cls, ws_cls = protocol_classes(self._shared)
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._config = uvicorn.Config(
            app,
            http=http_cls,
            ws=ws_cls,
            loop="asyncio",
            lifespan="auto",
            # Client addresses come from the socket only: a forwarded-for header would let any caller
            # pick the IP that rate limits and audit records see.
            proxy_headers=False,
            server_header=False,
            limit_concurrency=limit_concurrency,
            log_level=log_level,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def run(self) -> None:
        """Serve in the calling thread until interrupted (the CLI path)."""
        self.tls.start_watching()
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self.tls.stop_watching()

    def start(self, *, timeout: float = 20.0) -> MTLSServer:
        self.tls.start_watching()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="cyxwiz-mtls", daemon=True
        )
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("mTLS server failed to start")
            threading.Event().wait(0.02)
            waited += 0.02
            if waited > timeout:
                raise TimeoutError("mTLS server did not start in time")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
            self._thread = None
        self.tls.stop_watching()
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> MTLSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
