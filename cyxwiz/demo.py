"""``cyxwiz demo``: the whole job lifecycle on the embedded defaults, shown step by step.

The demo composes Prefect flows, and the core library imports no Prefect (ARCHITECTURE layout), so the
command runs ``python -m infra.demo`` from the project checkout as a child process. No shell is involved.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cyxwiz.errors import ConfigError


def project_root() -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "infra" / "demo.py").is_file():
        raise ConfigError(
            "the demo needs the project checkout (infra/demo.py next to cyxwiz/)",
            path=str(root),
            hint="run it from a clone: make demo",
        )
    return root


def run_demo(*, workdir: str | Path, keep: bool = False, hsm: bool = False) -> int:
    root = project_root()
    argv = [sys.executable, "-m", "infra.demo", "--workdir", str(Path(workdir).resolve())]
    if keep:
        argv.append("--keep")
    if hsm:
        argv.append("--hsm")
    child = subprocess.Popen(argv, cwd=root)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group): it stops every service it started. Not
            # subprocess.call, which SIGKILLs the child here and leaves those services running.
            continue
