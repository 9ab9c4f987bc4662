"""Loopback-only mTLS tunnel from the node agent to the gateway.

Prefect's client cannot present a client certificate, and the worker and flow engine call plain
``get_client()`` and open their own websockets (ARCHITECTURE.md). So the agent points ``PREFECT_API_URL`` at
this listener on 127.0.0.1, and every byte to the API leaves the host inside TLS 1.3 with the node's
certificate (SPEC A5, D1). Only loopback clients can connect; the listener never binds another address.

With :class:`Credentials` the tunnel also speaks for the node: each new connection presents the node's
*current* certificate, and each HTTP request head gets the *current* session token (whatever stale
credential the Prefect client sent is dropped) and a job token bound to the current certificate. A
refreshed session or a renewed certificate thus reaches the running worker and flow runs without
restarting anything (issue 18). Request bodies and upgraded (websocket) streams pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024


class Pinned(Protocol):
    """One connection's credentials, read together (a token and the certificate it is bound to)."""

    def ssl_context(self) -> ssl.SSLContext: ...

    def session_token(self) -> str | None: ...

    def job_token(self, presented: str) -> str: ...

    def stale(self) -> bool:
        """The node renewed its certificate since this connection opened (time for a new one)."""
        ...


class Credentials(Protocol):
    def pin(self) -> Pinned: ...


@dataclass(frozen=True)
class TunnelEndpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class _Upstream:
    """One mTLS connection to the gateway under one set of pinned credentials, and the task relaying its
    answers to the local client."""

    def __init__(self, creds: Pinned, writer: asyncio.StreamWriter, relay: asyncio.Task[None]) -> None:
        self.creds, self.writer, self.relay = creds, writer, relay

    def usable(self) -> bool:
        return not self.relay.done() and not self.creds.stale()

    def retire(self) -> None:
        """Close this connection without closing the client's: its next request goes on a fresh one."""
        self.relay.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers to the client; when the gateway ends the connection, the client's ends too (as it would
    have without the tunnel). A retired connection is cancelled instead and leaves the client open."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    with contextlib.suppress(Exception):
        writer.close()


async def _requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connect: Callable[[], Awaitable[_Upstream]],
) -> None:
    """Forward HTTP/1.1 requests, each head with the node's current credentials; after an upgrade, bytes.

    A keep-alive client (Prefect's worker holds its connections for hours) outlives certificates: once the
    node renewed, the next request goes on a new gateway connection with the new certificate and the
    session bound to it. HTTP/1.1 answers in order, so between two requests nothing is in flight.
    """
    upstream: _Upstream | None = None
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            if upstream is None or not upstream.usable():
                if upstream is not None:
                    upstream.retire()
                upstream = await connect()
            rewritten, length, chunked, upgrade = _rewrite_head(head, upstream.creds)
            remote = upstream.writer
            remote.write(rewritten)
            if upgrade:
                await remote.drain()
                await _pipe(reader, remote)
                await upstream.relay
                return
            await (_chunks(reader, remote) if chunked else _copy(reader, remote, length))
            await remote.drain()
    except (ConnectionError, OSError, ssl.SSLError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        if upstream is not None:
            with contextlib.suppress(Exception):
                upstream.writer.close()
        with contextlib.suppress(Exception):
            writer.close()


def _rewrite_head(head: bytes, creds: Pinned) -> tuple[bytes, int, bool, bool]:
    """The request head with the current credentials; its body length, chunked flag, upgrade flag."""
    if len(head) > _MAX_HEAD:
        raise ValueError("request head too large")
    lines = head[:-4].split(b"\r\n")
    out, length, chunked, upgrade = [lines[0]], 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"authorization":
            continue  # a stale token frozen into the client; the current one is added below
        if key == b"x-cyxwiz-job-token":
            out.append(b"X-Cyxwiz-Job-Token: " + creds.job_token(value.strip().decode("latin-1")).encode())
            continue
        length = int(value.strip() or b"0") if key == b"content-length" else length
        chunked = chunked or (key == b"transfer-encoding" and b"chunked" in value.lower())
        upgrade = upgrade or key == b"upgrade"
        out.append(line)
    token = creds.session_token()
    if token:
        out.append(b"Authorization: Bearer " + token.encode())
    return b"\r\n".join(out) + b"\r\n\r\n", length, chunked, upgrade


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int) -> None:
    while length > 0:
        data = await reader.read(min(length, _CHUNK))
        if not data:
            raise ConnectionError("body cut short")
        writer.write(data)
        length -= len(data)


async def _chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            return
        await _copy(reader, writer, size + 2)


class MTLSTunnel:
    """Accept plain TCP on loopback, forward each connection over mTLS to ``remote_host:remote_port``."""

    def __init__(
        self,
        *,
        remote_host: str,
        remote_port: int,
        ssl_context: ssl.SSLContext,
        credentials: Credentials | None = None,
    ) -> None:
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("ssl_context must verify the gateway certificate (CERT_REQUIRED)")
        self._remote = (remote_host, remote_port)
        self._ssl = ssl_context
        self._credentials = credentials
        self._server: asyncio.Server | None = None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        peer = client_writer.get_extra_info("peername")
        if not peer or peer[0] not in {"127.0.0.1", "::1"}:
            client_writer.close()
            return
        credentials = self._credentials
        if credentials is not None:
            await _requests(client_reader, client_writer, lambda: self._connect(credentials, client_writer))
            return
        try:
            remote_reader, remote_writer = await asyncio.open_connection(
                *self._remote, ssl=self._ssl, server_hostname=self._remote[0]
            )
        except (OSError, ssl.SSLError):
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, remote_writer), _pipe(remote_reader, client_writer))

    async def _connect(self, credentials: Credentials, client_writer: asyncio.StreamWriter) -> _Upstream:
        """A gateway connection presenting the node's current certificate (OSError when refused)."""
        creds = credentials.pin()
        remote_reader, remote_writer = await asyncio.open_connection(
            *self._remote, ssl=creds.ssl_context(), server_hostname=self._remote[0]
        )
        return _Upstream(creds, remote_writer, asyncio.create_task(_relay(remote_reader, client_writer)))

    async def start(self, *, port: int = 0) -> TunnelEndpoint:
        self._server = await asyncio.start_server(self._handle, host="127.0.0.1", port=port)
        sock = self._server.sockets[0]
        host, bound = sock.getsockname()[:2]
        return TunnelEndpoint(host=host, port=bound)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.contextmanager
def running_tunnel(
    *,
    remote_host: str,
    remote_port: int,
    ssl_context: ssl.SSLContext,
    credentials: Credentials | None = None,
) -> Iterator[TunnelEndpoint]:
    """Run the tunnel on a background event loop thread for the duration of the block."""
    loop = asyncio.new_event_loop()
    tunnel = MTLSTunnel(
        remote_host=remote_host, remote_port=remote_port, ssl_context=ssl_context, credentials=credentials
    )
    thread = threading.Thread(target=loop.run_forever, name="cyxwiz-mtls-tunnel", daemon=True)
    thread.start()
    try:
        endpoint = asyncio.run_coroutine_threadsafe(tunnel.start(), loop).result(timeout=10)
        yield endpoint
    finally:
        asyncio.run_coroutine_threadsafe(tunnel.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
