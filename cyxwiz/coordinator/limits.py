"""DoS guards (SPEC I): token-bucket rate limits per identity and per IP, request body caps.

Both are plain ASGI so the coordinator and the gateway share them; a refusal is a problem+json body and an
audit record, produced by :func:`cyxwiz.coordinator.problems.send_problem`.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cyxwiz.errors import ConfigError, CyxwizError, RateLimitError, ValidationError
from cyxwiz.poller import Poller

log = logging.getLogger(__name__)


class BodyTooLargeError(ValidationError):
    """A request body over the configured cap (SPEC I: body size limits)."""

    code = "body-too-large"
    http_status = 413


class BodyTimeoutError(ValidationError):
    """A request body that did not arrive whole in time (SPEC I: slow clients hold no worker)."""

    code = "body-timeout"
    http_status = 408


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """``rate`` requests per second per key, bursts up to ``burst``. Thread-safe, bounded memory."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError("rate must be > 0 and burst >= 1", field="rate_limit", rule="I")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str, *, what: str = "identity") -> None:
        """Take one token for ``key`` or raise RateLimitError (HTTP 429)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._evict(now)
                bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), stamp=now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens < 1.0:
                retry = (1.0 - bucket.tokens) / self.rate
                raise RateLimitError(
                    f"too many requests for this {what}; retry in {retry:.1f}s",
                    field=what,
                    rule="I",
                )
            bucket.tokens -= 1.0

    def _evict(self, now: float) -> None:
        # Full buckets carry no state worth keeping: drop them first, then the oldest.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for key in sorted(self._buckets, key=lambda k: self._buckets[k].stamp)[: self.max_keys // 10]:
                del self._buckets[key]


ASGIApp = Callable[..., Any]
Refuse = Callable[[dict[str, Any], Any, Exception], Any]
#: Raises a typed error (401) unless the request carries a credential that verifies: called before any
#: body byte is read, so an unauthenticated client cannot make the server buffer anything.
Admit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class BodyRoute:
    """The body rule of the requests whose path starts with ``prefix`` (the first match wins).

    ``cap``: the most bytes such a body may have. ``admit``: whether the credential is checked before the
    body is read (False only where the credential travels in the body and the cap is tiny; a ``stream``
    route's app authenticates before reading). ``stream``: the app reads its own body (it checks first,
    as the presigned object store checks its URL); it is only counted against the cap here.
    """

    prefix: str
    cap: int
    admit: bool = True
    stream: bool = False
    #: Checked on every request of the route, with or without a body, before anything is read.
    gate: Admit | None = None


class GuardMiddleware:
    """Per-IP rate limit, then per route: a body cap, the credential checked *before* the body is read
    (:data:`Admit`), and the whole body within ``body_timeout`` (SPEC I: DoS, body size limits)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        ip_limiter: RateLimiter,
        max_body: int,
        refuse: Refuse,
        routes: tuple[BodyRoute, ...] = (),
        admit: Admit | None = None,
        body_timeout: float = 60.0,
    ) -> None:
        self.app = app
        self.ip_limiter = ip_limiter
        self.max_body = max_body
        self.refuse = refuse
        self.routes = routes
        self.admit = admit
        self.body_timeout = body_timeout

    def route(self, path: str) -> BodyRoute:
        for route in self.routes:
            if path.startswith(route.prefix):
                return route
        return BodyRoute(prefix="", cap=self.max_body)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        ip = (scope.get("client") or ("unknown", 0))[0]
        try:
            self.ip_limiter.check(ip, what="ip")
        except RateLimitError as exc:
            await self.refuse(scope, send, exc)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route(scope.get("path", ""))
        refusal = self._before_body(scope, route)
        if refusal is not None:
            await self.refuse(scope, send, refusal)
        elif route.stream:
            await self._streamed(scope, receive, send, route.cap)
        else:
            await self._buffered(scope, receive, send, route.cap)

    def _before_body(self, scope: dict[str, Any], route: BodyRoute) -> CyxwizError | None:
        """Why the request is refused before one body byte is read (declared size, credential), or None."""
        declared, chunked = _declared_body(scope)
        if declared > route.cap:
            return _too_big(route.cap)
        if route.gate is not None:
            try:
                route.gate(scope)
            except CyxwizError as exc:
                return exc
        if (declared or chunked) and route.admit and self.admit is not None and not route.stream:
            try:
                self.admit(scope)
            except CyxwizError as exc:
                return exc
        return None

    async def _buffered(self, scope: dict[str, Any], receive: Any, send: Any, cap: int) -> None:
        try:
            data = await asyncio.wait_for(_read_capped(receive, cap), self.body_timeout)
        except TimeoutError:
            await self.refuse(scope, send, _too_slow(self.body_timeout))
            return
        except BodyTooLargeError as exc:
            await self.refuse(scope, send, exc)
            return
        if data is None:
            return
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        await self.app(scope, replay, send)

    async def _streamed(self, scope: dict[str, Any], receive: Any, send: Any, cap: int) -> None:
        """The app reads its own body; past the cap it gets a disconnect and the client a 413."""
        size = 0
        refused = False

        async def counted() -> dict[str, Any]:
            nonlocal size, refused
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > cap and not refused:
                    refused = True
                    await self.refuse(scope, send, _too_big(cap))
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict[str, Any]) -> None:
            if not refused:  # after the 413 nothing the app says reaches the client
                await send(message)

        await self.app(scope, counted, guarded)


def _declared_body(scope: dict[str, Any]) -> tuple[int, bool]:
    """The declared Content-Length (an unparsable one counts as too big) and whether it is chunked."""
    declared, chunked = 0, False
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                declared = max(declared, int(value))
            except ValueError:
                declared = 1 << 62
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


async def _read_capped(receive: Any, cap: int) -> bytes | None:
    """The body, up to ``cap`` bytes (a chunked body cannot sneak past it); None when the client left."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        size += len(body)
        if size > cap:
            raise _too_big(cap)
        chunks.append(body)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _too_big(cap: int) -> BodyTooLargeError:
    return BodyTooLargeError(
        f"request body larger than {cap} bytes", field="body", rule="I", hint="send less"
    )


def _too_slow(seconds: float) -> CyxwizError:
    return BodyTimeoutError(f"request body not complete within {seconds:g} s", field="body", rule="I")


class RefusalCap:
    """An audit sink in front of another that keeps a refusal flood from filling the log (SPEC I, H2).

    Successes always pass. Refusals pass up to ``per_minute`` per actor and minute; the rest of that
    minute is counted and written as one ``audit.refusals-suppressed`` summary per actor when the minute
    is over, so the log still says how many there were: at the next event, at the minute's end (a timer
    started by the first suppressed refusal, so a flood that stops is still summed up) and at process exit.
    """

    def __init__(
        self,
        inner: Any,
        *,
        per_minute: int = 120,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = 60.0,
    ) -> None:
        if per_minute < 1:
            raise ConfigError("per_minute must be >= 1", field="per_minute", rule="I")
        if window_s <= 0:
            raise ConfigError("window_s must be > 0", field="window_s", rule="I")
        self.inner = inner
        self.per_minute = per_minute
        self.clock = clock
        #: The "minute": shorter only in tests, so the end-of-window summary is seen without a minute's wait.
        self.window_s = window_s
        self._lock = threading.Lock()
        self._window = int(clock() // window_s)
        self._counts: dict[tuple[str, str], int] = {}
        self._timer: Poller | None = None

    def record(self, event: Any) -> None:
        if str(getattr(event.outcome, "value", event.outcome)) == "success":
            self.inner.record(event)
            return
        key = (event.actor_id, str(getattr(event.actor_type, "value", event.actor_type)))
        with self._lock:
            summaries = self._roll()
            count = self._counts[key] = self._counts.get(key, 0) + 1
        for summary in summaries:
            self.inner.record(summary)
        if count <= self.per_minute:
            self.inner.record(event)
        elif self._timer is None:
            self._start_timer()

    def _start_timer(self) -> None:
        """Summaries written at each minute's end even when nothing else is recorded, and at exit.
        Only on the real clock: an injected one (tests) is advanced by hand and rolled by :meth:`record`."""
        with self._lock:
            if self._timer is not None or self.clock is not time.monotonic:
                return
            self._timer = Poller(
                check=self._tick,
                interval=lambda: min(
                    self.window_s, max(0.05, self.window_s - self.clock() % self.window_s + 0.05)
                ),
                name="cyxwiz-refusal-summaries",
            )
        self._timer.start()
        atexit.register(self._flush_at_exit)

    def _tick(self) -> None:
        with self._lock:
            summaries = self._roll()
        for summary in summaries:
            self.inner.record(summary)

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except Exception:  # the sink may be closed by now: nothing left to tell it
            log.warning("refusal summaries lost at exit", exc_info=True)

    def flush(self) -> None:
        """Write the summaries of the minute in progress now (at shutdown)."""
        with self._lock:
            summaries = self._summaries()
            self._counts = {}
        for summary in summaries:
            self.inner.record(summary)

    def _roll(self) -> list[Any]:
        window = int(self.clock() // self.window_s)
        if window == self._window:
            return []
        summaries = self._summaries()
        self._window, self._counts = window, {}
        return summaries

    def _summaries(self) -> list[Any]:
        from cyxwiz.audit import events as ev

        return [
            ev.make_event(
                event_type=ev.EventType.AUTHORIZATION,
                actor_id=actor,
                actor_type=ev.ActorType(actor_type),
                resource="audit",
                action="audit.refusals-suppressed",
                outcome=ev.Outcome.DENIED,
                details={
                    "suppressed": count - self.per_minute,
                    "refusals": count,
                    "per_minute": self.per_minute,
                },
            )
            for (actor, actor_type), count in self._counts.items()
            if count > self.per_minute
        ]
