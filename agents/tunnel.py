"""Loopback-only mTLS tunnel from the node agent to the gateway.

Prefect's client cannot present a client certificate, and the worker and flow engine call plain
``get_client()`` and open their own websockets (ARCHITECTURE.md). So the agent points ``PREFECT_API_URL`` at
this listener on 127.0.0.1, and every byte to the API leaves the host inside TLS 1.3 with the node's
certificate (SPEC A5, D1). Only loopback clients can connect; the listener never binds another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass

_CHUNK = 64 * 1024


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


class MTLSTunnel:
    """Accept plain TCP on loopback, forward each connection over mTLS to ``remote_host:remote_port``."""

    def __init__(self, *, remote_host: str, remote_port: int, ssl_context: ssl.SSLContext) -> None:
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("ssl_context must verify the gateway certificate (CERT_REQUIRED)")
        self._remote = (remote_host, remote_port)
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        peer = client_writer.get_extra_info("peername")
        if not peer or peer[0] not in {"127.0.0.1", "::1"}:
            client_writer.close()
            return
        try:
            remote_reader, remote_writer = await asyncio.open_connection(
                *self._remote, ssl=self._ssl, server_hostname=self._remote[0]
            )
        except (OSError, ssl.SSLError):
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, remote_writer), _pipe(remote_reader, client_writer))

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
    *, remote_host: str, remote_port: int, ssl_context: ssl.SSLContext
) -> Iterator[TunnelEndpoint]:
    """Run the tunnel on a background event loop thread for the duration of the block."""
    loop = asyncio.new_event_loop()
    tunnel = MTLSTunnel(remote_host=remote_host, remote_port=remote_port, ssl_context=ssl_context)
    thread = threading.Thread(target=loop.run_forever, name="cyxwiz-mtls-tunnel", daemon=True)
    thread.start()
    try:
        endpoint = asyncio.run_coroutine_threadsafe(tunnel.start(), loop).result(timeout=10)
        yield endpoint
    finally:
        asyncio.run_coroutine_threadsafe(tunnel.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
