"""A throw-away PostgreSQL cluster (Debian's ``postgresql`` binaries) for the multi-host harness.

``initdb`` into a fresh directory, ``postgres`` listening where asked, trust authentication (the cluster
lives inside the control-plane namespace, behind its firewall, for one run). As root it runs as the
``postgres`` system user, which PostgreSQL insists on.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cyxwiz.errors import ConfigError


def _bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("postgres")
    if found is None:
        raise ConfigError("PostgreSQL binaries not found", hint="apt-get install postgresql")
    return Path(found).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str = "cyxwiz"
    database: str = "postgres"

    def url(self, driver: str = "asyncpg") -> str:
        """SQLAlchemy URL on loopback: ``asyncpg`` for Prefect, ``psycopg`` for the coordinator."""
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{self.database}"


@contextlib.contextmanager
def local_postgres(log_path: Path, *, listen: str = "127.0.0.1", timeout: float = 60.0) -> Iterator[Postgres]:
    """Run a fresh cluster until the block exits; its directory is removed after, its log kept.

    The data lives in its own temporary directory: as root, the ``postgres`` user must reach it, which a
    0700 home of the caller would not allow."""
    bindir = _bindir()
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="cyxwiz-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ConfigError("running as root and no 'postgres' user exists") from None
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    data = root / "data"
    port = _free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    initdb = subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "cyxwiz", "--auth=trust", "-E", "UTF8"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    if initdb.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ConfigError(f"initdb failed: {initdb.stderr.strip()[-500:]}")
    settings = [f"listen_addresses={listen}", "fsync=off", "max_connections=200"]
    argv = [*run_as, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root)]
    for setting in settings:
        argv += ["-c", setting]
    log = log_path.open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        ready = str(bindir / "pg_isready")
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ConfigError(
                    f"postgres exited with {proc.returncode}", path=str(root.parent / "postgres.log")
                )
            probe = [ready, "-h", "127.0.0.1", "-p", str(port)]
            if subprocess.run(probe, check=False, capture_output=True).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ConfigError(f"postgres not ready after {timeout:.0f} s")
            time.sleep(0.2)
        yield Postgres(port=port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
