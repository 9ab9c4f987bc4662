"""The one retry rule for control-plane calls (cyxwiz.retry; issue 21, SPEC F1, F2): what is transient,
how long it waits, and that a refusal is never asked again. Real httpx errors and responses; the clock
and sleep are the test's so that no test waits out a budget."""

from __future__ import annotations

import random
import ssl

import httpx
import pytest

from cyxwiz.errors import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    CyxwizError,
    UnavailableError,
    UpstreamError,
    ValidationError,
)
from cyxwiz.retry import Backoff, is_transient, retrying

_REQUEST = httpx.Request("POST", "https://coordinator.test/v1/jobs/job-x/completion")


def _status(code: int) -> httpx.HTTPStatusError:
    response = httpx.Response(code, request=_REQUEST)
    return httpx.HTTPStatusError(f"{code}", request=_REQUEST, response=response)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused", request=_REQUEST),
        httpx.ReadError("connection reset by peer", request=_REQUEST),
        httpx.RemoteProtocolError("server disconnected without sending a response", request=_REQUEST),
        httpx.ConnectTimeout("timed out", request=_REQUEST),
        httpx.ReadTimeout("timed out", request=_REQUEST),
        _status(502),
        _status(503),
        _status(504),
        UnavailableError("coordinator unavailable (503)"),
        UpstreamError("the Prefect API did not answer"),
        ConnectionRefusedError(111, "refused"),
    ],
)
def test_a_service_that_was_not_there_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        _status(400),
        _status(401),
        _status(403),
        _status(404),
        _status(409),
        _status(413),
        _status(422),
        _status(429),
        _status(500),
        AuthenticationError("refused (401)"),
        AuthorizationError("refused (403)"),
        ConflictError("job is verifying"),
        ValidationError("bad"),
        CyxwizError("anything else"),
        ValueError("a bug"),
    ],
)
def test_a_refusal_or_a_bug_is_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def _wrapped(cause: BaseException) -> httpx.TransportError:
    """As httpx raises it: its own error with the ssl module's error as the cause."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise httpx.ReadError("handshake", request=_REQUEST) from inner
    except httpx.ReadError as outer:
        return outer


def test_a_tls_refusal_is_a_refusal_and_a_tls_connection_that_ended_is_not() -> None:
    revoked = ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked")
    assert not is_transient(_wrapped(revoked))
    assert not is_transient(_wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed")))
    assert is_transient(_wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")))
    assert is_transient(_wrapped(ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed")))


def test_a_call_that_fails_while_the_service_restarts_succeeds_after() -> None:
    clock, calls = _Clock(), []

    def call() -> str:
        calls.append(clock.now)
        if len(calls) < 5:
            raise httpx.ConnectError("connection refused", request=_REQUEST)
        return "accepted"

    assert retrying(call, what="submit proof", sleep=clock.sleep, clock=clock) == "accepted"
    assert len(calls) == 5 and len(clock.slept) == 4


def test_a_403_is_raised_at_once_and_never_sent_again() -> None:
    """The refusal control of the retry rule: one call, no wait, the refusal itself comes out."""
    clock, calls = _Clock(), []

    def call() -> None:
        calls.append(1)
        raise AuthorizationError("job token is for another job or node", rule="C3")

    with pytest.raises(AuthorizationError, match="another job"):
        retrying(call, what="submit proof", sleep=clock.sleep, clock=clock)
    assert calls == [1] and clock.slept == []


def test_a_service_that_never_comes_back_is_given_up_within_the_budget() -> None:
    clock = _Clock()
    backoff = Backoff(budget_s=90.0)

    def call() -> None:
        raise httpx.ConnectError("connection refused", request=_REQUEST)

    with pytest.raises(
        UnavailableError, match=r"submit proof: the service stayed unreachable over \d+ attempts"
    ):
        retrying(call, what="submit proof", backoff=backoff, sleep=clock.sleep, clock=clock)
    assert sum(clock.slept) <= 90.0
    assert sum(clock.slept) >= 60.0  # long enough to outlast a restart of tens of seconds


def test_the_deadline_bounds_the_retries_before_the_budget() -> None:
    """A job token's expiry (``until``) ends the retries even when the budget would allow more."""
    clock = _Clock()

    def call() -> None:
        raise httpx.ReadTimeout("timed out", request=_REQUEST)

    with pytest.raises(UnavailableError):
        retrying(call, what="upload", until=clock.now + 7.0, sleep=clock.sleep, clock=clock)
    assert sum(clock.slept) <= 7.0


def test_the_waits_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first_s=0.5, factor=2.0, max_delay_s=10.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]):
        waits = [backoff.delay(attempt, rng) for _ in range(50)]
        assert all(base * 0.5 <= w <= base for w in waits)
        assert len({round(w, 6) for w in waits}) > 1  # jittered: restarted nodes do not stampede together


def test_the_budget_counts_from_the_first_failure_not_from_a_long_first_call() -> None:
    """A verification may run for minutes before its service dies under it: the retries still get their
    whole budget to cover the restart."""
    clock, calls = _Clock(), []

    def call() -> str:
        calls.append(clock.now)
        if len(calls) == 1:
            clock.now += 600.0  # ten minutes of work, then the connection is reset
            raise httpx.ReadError("connection reset by peer", request=_REQUEST)
        if clock.now - calls[0] < 600.0 + 30.0:
            raise httpx.ConnectError("connection refused", request=_REQUEST)  # restarting for 30 s
        return "verdict"

    assert retrying(call, what="verification", sleep=clock.sleep, clock=clock) == "verdict"
