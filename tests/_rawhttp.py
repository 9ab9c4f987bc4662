"""A raw HTTP/1.1 request over TLS: the head is sent, the body only when asked, so a test can see what a
server answers before it has read one body byte (SPEC I: nothing buffered before authentication)."""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit


def head_only(url: str, ctx: ssl.SSLContext, head: str, *, body: bytes | None = None) -> tuple[int, bytes]:
    """Send ``head`` (request line + headers, without the blank line) and ``body`` if given; the status
    code and the raw answer. With ``body=None`` the declared body is never sent."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            tls.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + (body or b""))
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer
