"""Fixtures shared by the whole suite. Area fixtures live in each test package's conftest.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests._postgres import running_postgres
from tests._processes import MARKER, kill_all, settle

# Prefect must never phone home or pick up a developer's profile during tests.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Every process this session starts inherits the marker, so the end of the session can tell what it
# left running (also daemons that detached). A nested pytest run gets a marker of its own.
SESSION_ID = uuid.uuid4().hex
os.environ[MARKER] = SESSION_ID


#: set to 1 to run the tests marked ``ci`` too (``.ci/run`` does)
ALL_TESTS = "CYXWIZ_ALL_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``make test`` skips the few slowest end-to-end tests (marked ``ci``: minutes each), so that it stays
    near 20 minutes on a 2-core machine; CI runs them (``CYXWIZ_ALL_TESTS=1``), and so does any run that
    names its tests itself (a path or ``-m``) rather than taking the default ``tests`` directory."""
    if os.environ.get(ALL_TESTS) == "1" or config.option.markexpr:
        return
    if config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        return
    skip = pytest.mark.skip(reason=f"among the slowest: CI runs it ({ALL_TESTS}=1 make test)")
    for item in items:
        if item.get_closest_marker("ci") is not None:
            item.add_marker(skip)


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
    from infra.local_server import local_prefect_server

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


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture is torn down: nothing the session started may still run (issue 15).

    Whatever is left is listed, killed, and fails the run, so a leak shows up in CI and not on the
    machine of the next person who runs the suite.
    """
    left = settle(SESSION_ID, root=os.getpid())
    if left:
        kill_all(left)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  {proc}" for proc in left]
        message = "processes started by this test session were still running (killed now):\n" + "\n".join(
            lines
        )
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message)
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _EXIT_STATUS.append(int(session.exitstatus))


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
