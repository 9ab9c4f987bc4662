"""Fixtures shared by the whole suite. Area fixtures live in each test package's conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests._postgres import running_postgres

# Prefect must never phone home or pick up a developer's profile during tests.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (apt's postgresql) for the SQL store tests.

    CI must run these: a failure to start is an error, unless CYXWIZ_ALLOW_PG_SKIP=1 says skipping is fine.
    """
    try:
        with running_postgres() as url:
            yield url
    except RuntimeError as exc:
        if os.environ.get("CYXWIZ_ALLOW_PG_SKIP") == "1":
            pytest.skip(f"PostgreSQL cannot start here: {exc}")
        raise


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real ``prefect server start`` on loopback (SQLite), shared by the Prefect-layer tests.

    The test process itself is pointed at it, so ``run_deployment`` and blocks talk to this server.
    """
    from flows.local_server import local_prefect_server

    home = tmp_path_factory.mktemp("prefect-home")
    with local_prefect_server(home) as server:
        saved = {key: os.environ.get(key) for key in server.env()}
        os.environ.update(server.env())
        # Prefect snapshots its settings when first imported; env changes after that need this too.
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_API_URL, temporary_settings

        try:
            with temporary_settings(
                updates={PREFECT_API_URL: server.api_url, PREFECT_UI_API_URL: server.api_url}
            ):
                yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave at once, with pytest's own status, once every report is written.

    Prefect's in-process event and log services drain at interpreter exit, and by then the Prefect servers
    the tests started (and stopped) are gone: each pending event retries its reconnects, and a clean run
    was seen idling ten minutes after its summary. Nothing the tests assert happens after this point.
    """
    if not _EXIT_STATUS or os.environ.get("CYXWIZ_TEST_NORMAL_EXIT"):
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
