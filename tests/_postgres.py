"""A real PostgreSQL server for tests: initdb into a temp dir, listen on loopback, torn down after."""

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
from pathlib import Path


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("postgres")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Yield a SQLAlchemy URL (psycopg 3) for a fresh server; raise RuntimeError with why it can't start."""
    bindir = _pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries not found (apt-get install postgresql)")
    run_as: list[str] = []
    root = tempfile.mkdtemp(prefix="cyxwiz-pg-")
    if os.geteuid() == 0:
        # postgres refuses to run as root: run it as the 'postgres' system user.
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root and no 'postgres' user exists") from exc
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    data = os.path.join(root, "data")
    port = _free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    # The test session's marker (tests/_processes.py), so a server left behind is found and reported.
    env.update({k: v for k, v in os.environ.items() if k == "CYXWIZ_TEST_SESSION"})
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", data, "-U", "cyxwiz", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        env=env,
    )
    proc = subprocess.Popen(
        [
            *run_as,
            str(bindir / "postgres"),
            "-D",
            data,
            "-p",
            str(port),
            "-k",
            root,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"postgres exited: {err[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not start in 30 s")
            time.sleep(0.1)
        # Wait for readiness, not just the socket.
        ready = str(bindir / "pg_isready")
        for _ in range(100):
            if (
                subprocess.run(
                    [ready, "-h", "127.0.0.1", "-p", str(port)], check=False, capture_output=True
                ).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        yield f"postgresql+psycopg://cyxwiz@127.0.0.1:{port}/postgres"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
