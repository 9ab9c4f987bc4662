"""Running test code as other Unix accounts (root only): how production separates its services (issue 17)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def launcher(uid: int, groups: list[int], *, gid: int | None = None) -> list[str]:
    """setpriv drops to ``uid``, primary group ``gid`` (default: ``uid``) and supplementary ``groups``,
    with no capability left, as systemd's User=, Group= and SupplementaryGroups= do."""
    extra = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", extra, "--"]


def require_other_accounts(uid: int) -> None:
    """Skip unless this run can start this checkout's Python as ``uid``."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run code as other uids")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run(
        [*launcher(uid, []), sys.executable, "-c", "import cyxwiz"], cwd="/",
        env={"PYTHONPATH": str(PROJECT)}, capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("this checkout's interpreter is not readable by other uids")


def run_as(
    uid: int, groups: list[int], code: str, *args: str, stdin: str = "", gid: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` as ``uid`` (primary group ``gid``, default ``uid``) with ``groups``."""
    return subprocess.run(
        [*launcher(uid, groups, gid=gid), sys.executable, "-c", code, *args],
        input=stdin, capture_output=True, text=True, timeout=120, cwd="/",
        env={"PYTHONPATH": str(PROJECT), "PATH": os.environ.get("PATH", "")}, check=False,
    )  # fmt: skip
