"""Presigned URLs for the local backend: HMAC-signed, expiring, served by the coordinator (SPEC C3, D3).

The local store has no server of its own, so the coordinator mounts :func:`asgi_app` (or calls
:func:`handle_presigned` from whatever framework it uses). A URL looks like::

    {base_url}/jobs/{job}/outputs/model.safetensors?exp=1700000000&sha256=…&size=123&n=…&sig=…

``sig`` is HMAC-SHA256 over method, exact key, expiry, hash, size and a per-URL nonce ``n`` under a key
derived from the store's master key, so changing any of them — another job's key, a later expiry, another
hash — is refused. PUTs are always bound to a hash and size and the body is checked before anything is
stored. The nonce makes every issuance its own URL: the coordinator can refuse the ones it gave a node
that has since lost the job (issue 21).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from cyxwiz.audit.events import presigned_url_used
from cyxwiz.errors import CyxwizError, IntegrityError, PresignError
from cyxwiz.storage import layout
from cyxwiz.storage.base import BaseObjectStore
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.presign import DEFAULT_EXPIRY, PresignedRequest, check_content, check_expiry

if TYPE_CHECKING:
    from cyxwiz.audit import AuditSink

_PARAMS = frozenset({"exp", "sha256", "size", "n", "sig"})


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified URL allows: one method on one key until ``expires``, for this content."""

    method: str
    key: str
    expires: int
    sha256: str | None
    size: int | None


class UrlSigner:
    def __init__(self, *, secret: bytes, base_url: str, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise PresignError("URL signing secret must be at least 32 bytes", field="secret", rule="C3")
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self._clock = clock

    def __repr__(self) -> str:
        return f"UrlSigner(base_url={self.base_url!r})"

    @classmethod
    def from_master_key(
        cls, master: MasterKey, *, base_url: str, clock: Callable[[], float] = time.time
    ) -> UrlSigner:
        # A separate derived key: a leaked URL-signing key must not forge object tags or manifests.
        return cls(secret=bytes.fromhex(master.mac(b"cyxwiz-url-signing-v1")), base_url=base_url, clock=clock)

    def _sig(self, method: str, key: str, exp: int, sha256: str, size: str, *, nonce: str = "") -> str:
        parts = ["cyxwiz-url-v1", method, key, str(exp), sha256, size, *([nonce] if nonce else [])]
        message = "\n".join(parts).encode("utf-8")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(
        self,
        method: str,
        key: str,
        *,
        expires_in: int = DEFAULT_EXPIRY,
        sha256: str | None = None,
        size: int | None = None,
    ) -> PresignedRequest:
        method = method.upper()
        if method not in ("GET", "PUT"):
            raise PresignError(f"method {method!r} is not presignable", field="method", rule="C3")
        layout.validate_key(key)
        check_expiry(expires_in)
        if method == "PUT" or sha256 is not None or size is not None:
            if sha256 is None or size is None:
                raise PresignError("a PUT URL must be bound to sha256 and size", field="sha256", rule="D3")
            check_content(sha256, size)
        exp = int(self._clock()) + expires_in
        sha_text, size_text = sha256 or "", "" if size is None else str(size)
        query = {"exp": str(exp)}
        if sha256 is not None:
            query.update(sha256=sha_text, size=size_text)
        # One URL per issuance, even for the same object, expiry second and content: the coordinator can
        # then tell whom it issued a URL to, and refuse it once that node lost the job (issue 21, C3).
        query["n"] = secrets.token_hex(8)
        query["sig"] = self._sig(method, key, exp, sha_text, size_text, nonce=query["n"])
        headers = {"content-length": size_text} if method == "PUT" else {}
        return PresignedRequest(
            method=method,
            url=f"{self.base_url}/{key}?{urlencode(query)}",
            key=key,
            expires_at=_dt.datetime.fromtimestamp(exp, tz=_dt.UTC),
            sha256=sha256,
            size=size,
            headers=headers,
        )

    def verify(self, method: str, key: str, query: Mapping[str, str]) -> Grant:
        """The grant a request carries, or PresignError (tampered, expired, other key or method)."""
        method = method.upper()
        if set(query) - _PARAMS or "sig" not in query or "exp" not in query:
            raise PresignError("malformed presigned URL", field="query", rule="C3")
        try:
            layout.validate_key(key)
            exp = int(query["exp"])
        except (CyxwizError, ValueError):
            raise PresignError("malformed presigned URL", field="query", rule="C3") from None
        sha_text, size_text = query.get("sha256", ""), query.get("size", "")
        expected = self._sig(method, key, exp, sha_text, size_text, nonce=query.get("n", ""))
        if not hmac.compare_digest(expected.encode(), query["sig"].encode()):
            raise PresignError(
                "URL signature does not match (tampered, or for another key or method)", path=key, rule="C3"
            )
        if self._clock() > exp:
            raise PresignError("presigned URL has expired", path=key, rule="C3")
        return Grant(
            method=method,
            key=key,
            expires=exp,
            sha256=sha_text or None,
            size=int(size_text) if size_text else None,
        )


class LocalPresigner:
    """:class:`~cyxwiz.storage.presign.Presigner` for a local store served by the coordinator."""

    def __init__(self, *, store: BaseObjectStore, signer: UrlSigner) -> None:
        self.store = store
        self.signer = signer

    def presign_get(self, key: str, *, expires_in: int = DEFAULT_EXPIRY) -> PresignedRequest:
        info = self.store.head(key)
        if info.encrypted:
            raise PresignError("client-side encrypted objects are never handed to nodes", path=key, rule="D2")
        return self.signer.sign("GET", key, expires_in=expires_in, sha256=info.sha256, size=info.size)

    def presign_put(
        self, key: str, *, sha256: str, size: int, expires_in: int = DEFAULT_EXPIRY
    ) -> PresignedRequest:
        return self.signer.sign("PUT", key, expires_in=expires_in, sha256=sha256, size=size)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | Iterator[bytes]


def _problem(exc: CyxwizError) -> HttpResponse:
    body = json.dumps({"type": exc.code, "title": str(exc), "status": exc.http_status}).encode()
    return HttpResponse(exc.http_status, (("content-type", "application/problem+json"),), body)


def serve_grant(store: BaseObjectStore, grant: Grant, body: bytes = b"") -> HttpResponse:
    """Carry out a verified grant: stream a verified GET, or check and store a PUT body."""
    try:
        if grant.method == "GET":
            info, stream = store.open_verified(grant.key)
            if info.encrypted:
                raise PresignError("client-side encrypted objects are never handed to nodes", path=grant.key)
            if grant.sha256 is not None and grant.sha256 != info.sha256:
                raise IntegrityError("object changed since the URL was issued", path=grant.key, rule="D3")
            headers = (
                ("content-type", "application/octet-stream"),
                ("content-length", str(info.size)),
                ("x-cyxwiz-sha256", info.sha256),
            )
            return HttpResponse(200, headers, stream)
        if grant.method == "PUT":
            if grant.sha256 is None or grant.size is None:
                raise PresignError("PUT URL not bound to a hash", path=grant.key, rule="D3")
            if len(body) != grant.size or not hmac.compare_digest(
                hashlib.sha256(body).hexdigest(), grant.sha256
            ):
                raise IntegrityError("uploaded body does not match the hash bound in the URL", path=grant.key)
            info = store.put_bytes(grant.key, body)
            reply = json.dumps({"key": info.key, "sha256": info.sha256, "size": info.size}).encode()
            return HttpResponse(201, (("content-type", "application/json"),), reply)
        raise PresignError("method not allowed", field="method", rule="C3")
    except CyxwizError as exc:
        return _problem(exc)


def handle_presigned(
    store: BaseObjectStore,
    signer: UrlSigner,
    *,
    method: str,
    key: str,
    query: Mapping[str, str],
    body: bytes = b"",
) -> HttpResponse:
    """Framework-agnostic handler: ``key`` is the path after the mount point, ``query`` the parsed query."""
    try:
        grant = signer.verify(method, key, query)
    except CyxwizError as exc:
        return _problem(exc)
    return serve_grant(store, grant, body)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def asgi_app(
    *, store: BaseObjectStore, signer: UrlSigner, mount: str = "", audit: AuditSink | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A minimal ASGI app serving presigned GET/PUT under ``mount`` (e.g. ``/store``).

    The URL is verified before any body byte is read, and a PUT body is read only up to its bound size.
    Every presented URL, served or refused, is an audit event when ``audit`` is given (H2 data access).
    """
    mount = mount.rstrip("/")

    def note(scope: Scope, key: str, response: HttpResponse, reason: str | None = None) -> None:
        if audit is not None:
            client = scope.get("client")
            audit.record(
                presigned_url_used(
                    key=key, method=str(scope.get("method")), success=response.status < 400,
                    status=response.status, reason=reason, ip_address=client[0] if client else None,
                )
            )  # fmt: skip

    async def respond(send: Send, response: HttpResponse) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if isinstance(response.body, bytes):
            await send({"type": "http.response.body", "body": response.body})
            return
        # A verification failure mid-stream raises here: the server drops the connection and the
        # client sees a short body (it checks the sha256 it was given in any case).
        for chunk in response.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith(mount + "/"):
            await respond(send, HttpResponse(404, (), b""))
            return
        key = path[len(mount) + 1 :]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        try:
            grant = signer.verify(scope["method"], key, query)
        except CyxwizError as exc:
            note(scope, key, refused := _problem(exc), exc.message)
            await respond(send, refused)
            return
        body = bytearray()
        if grant.method == "PUT":
            limit = grant.size or 0
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = bool(message.get("more_body"))
                if len(body) > limit:
                    await respond(send, _problem(IntegrityError("body larger than the bound size", path=key)))
                    return
        served = serve_grant(store, grant, bytes(body))
        note(scope, key, served)
        await respond(send, served)

    return app
