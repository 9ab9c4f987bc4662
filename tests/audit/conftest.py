"""Fixtures for the audit tests: a controllable clock, a signing key, an open log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.audit import AuditLog, events
from tests.storage.conftest import moto_server  # noqa: F401 (the S3 server fixture, for archive tests)


class ManualClock:
    """A clock the test moves by hand (rotation across day boundaries without waiting)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 20, 23, 0, tzinfo=UTC))


#: One audit key for the whole test session: every log a test opens is signed by it, and the
#: ``signing_key`` fixture is the same key, so its public half is the verifier's pinned key.
TEST_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return TEST_KEY


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def audit_log(log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey) -> Iterator[AuditLog]:
    log = AuditLog.open(log_dir, signing_key=signing_key, clock=clock, auto_maintain=False)
    yield log
    log.close()


def sample_event(i: int = 0, at: datetime | None = None) -> events.SecurityEvent:
    return events.auth_attempt(
        actor_id=f"user-{i}",
        actor_type="user",
        success=i % 3 != 0,
        method="jwt",
        ip_address="127.0.0.1",
        at=at,
    )


def build_log(
    log_dir: Path, clock: ManualClock, key: Ed25519PrivateKey, *, days: int = 4, per_day: int = 5
) -> list[Path]:
    """A log of ``days`` days with ``per_day`` records each; all but the last day sealed and gzipped.

    Returns the data file of each day, oldest first.
    """
    from cyxwiz.audit.records import gz_name, log_name

    clock.now = clock.now.replace(hour=10)
    start = clock.now.date()
    with AuditLog.open(log_dir, signing_key=key, clock=clock, auto_maintain=False) as log:
        for d in range(days):
            for i in range(per_day):
                log.record(sample_event(d * 100 + i, at=clock.now))
                clock.advance(minutes=1)
            if d < days - 1:
                clock.advance(days=1)
        log.maintain()
    out = []
    for d in range(days):
        day = start + timedelta(days=d)
        out.append(log_dir / (gz_name(day) if d < days - 1 else log_name(day)))
    return out
