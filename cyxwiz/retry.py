"""Retrying a control-plane call across a restart of the service behind it (issue 21; SPEC F1, F2).

A coordinator, gateway or verifier killed and restarted mid-job is back within tens of seconds; a call
that gave up after two quick tries made an honest node's job fail and refunded its escrow. One rule for
every such call: retry what says nothing about the request (the connection was refused, reset or timed
out; a proxy or service answered 502/503/504) with exponential backoff and jitter, for a bounded total
that never runs past the caller's own deadline (a job token's expiry); never retry a refusal (every
other status, 4xx above all: the service looked at the request and said no, and asking again is either
pointless or an attack on its limits). A call retried here must be idempotent at the service: the
coordinator accepts the same proof twice, a presigned PUT of the same bytes overwrites itself, the
verifier answers a repeated request for a job with the verdict it already gave.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from cyxwiz.errors import CyxwizError, UnavailableError

T = TypeVar("T")

#: Statuses a proxy or a (re)starting service answers without having acted on the request.
TRANSIENT_STATUSES = frozenset({502, 503, 504})

_log = logging.getLogger("cyxwiz.retry")


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says the service was not there, not that it refused: a transport error
    (connect/read/write error, timeout, a connection closed mid-answer) or a 502/503/504. A TLS refusal
    (our certificate revoked or unknown, theirs unverifiable) is a refusal like a 403, never retried."""
    if _tls_refusal(exc):
        return False
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in TRANSIENT_STATUSES
    if isinstance(exc, CyxwizError):
        return exc.http_status in TRANSIENT_STATUSES
    return isinstance(exc, ConnectionError | TimeoutError)


#: TLS errors that only say the connection ended (the peer died mid-handshake): not a refusal.
_TLS_ENDED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_refusal(exc: BaseException) -> bool:
    """A handshake the peer refused (an alert: revoked, unknown CA, no certificate) or we refused
    (certificate verification) anywhere in ``exc``'s chain."""
    seen: BaseException | None = exc
    for _ in range(8):  # causes are short chains; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, _TLS_ENDED):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter inside a total budget.

    The n-th wait is ``first_s * factor**n`` capped at ``max_delay_s``, less a random share of up to
    ``jitter`` of it (so the nodes of a restarted coordinator do not all come back in the same second).
    The default budget outlasts a restart (tens of seconds) with margin.
    """

    first_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 10.0
    budget_s: float = 120.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_delay_s, self.first_s * self.factor**attempt)
        return base * (1.0 - self.jitter * rng.random())


DEFAULT_BACKOFF = Backoff()
_rng = random.SystemRandom()


def retrying(
    call: Callable[[], T],
    *,
    what: str,
    backoff: Backoff = DEFAULT_BACKOFF,
    until: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> T:
    """``call()``, again after each transient failure while ``backoff``'s budget (counted from the first
    failure: a call may legitimately run for minutes before the service dies under it) and ``until`` (a
    ``clock()`` time, e.g. the job token's ``exp``) allow; a refusal is raised at once, unchanged.

    Out of time, the last transient failure is raised as :class:`UnavailableError` naming ``what``,
    how many attempts were made and over how long.
    """
    start = end = None
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            now = clock()
            if start is None or end is None:
                start = now
                end = now + backoff.budget_s if until is None else min(now + backoff.budget_s, until)
            wait = backoff.delay(attempt, _rng)
            attempt += 1
            if now + wait > end:
                raise UnavailableError(
                    f"{what}: the service stayed unreachable over {attempt} attempts in {now - start:.0f} s "
                    f"({type(exc).__name__}: {str(exc)[:200]})",
                    rule="F1",
                    hint="the control plane is down or restarting; the job can be run again",
                ) from exc
            _log.warning("%s: %s, retry %d in %.1f s", what, type(exc).__name__, attempt, wait)
            sleep(wait)


__all__ = ["DEFAULT_BACKOFF", "TRANSIENT_STATUSES", "Backoff", "is_transient", "retrying"]
