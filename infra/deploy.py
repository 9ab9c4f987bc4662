"""Putting the project on a Prefect server: the ``prefect`` CLI run in the project directory, the work pools
and deployments of prefect.yaml, and one-off deployments for tests and benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def prefect_cli(*args: str, env: dict[str, str]) -> str:
    """``python -m prefect ARGS`` run in the project directory: its stdout, or RuntimeError with the tail."""
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def deploy_one(env: dict[str, str], directory: Path, *, name: str, entrypoint: str, pool: str) -> None:
    """Deploy one flow outside prefect.yaml (tests, benchmarks) through a throw-away prefect file."""
    prefect_file = directory / f"{name}-prefect.yaml"
    prefect_file.write_text(
        f"name: cyxwiz-{name}\n"
        "pull:\n"
        "  - prefect.deployments.steps.set_working_directory:\n"
        f"      directory: {json.dumps(str(PROJECT))}\n"
        "deployments:\n"
        f"  - name: {name}\n"
        f"    entrypoint: {entrypoint}\n"
        "    work_pool:\n"
        f"      name: {pool}\n"
        "      work_queue_name: default\n",
        encoding="utf-8",
    )
    prefect_cli("--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--name", name, env=env)


def deploy_project(env: dict[str, str], *, lifecycle: bool, everything: bool = False) -> None:
    """The gpu and control work pools and ``sandboxed-train`` (plus ``job-lifecycle`` with ``lifecycle``,
    or every deployment of prefect.yaml with ``everything``)."""
    steps: list[tuple[str, ...]] = [
        ("work-pool", "create", "gpu", "--type", "cyxwiz-sandbox", "--overwrite"),
        ("work-pool", "create", "control", "--type", "process", "--overwrite"),
    ]
    if everything:
        # Every deployment of prefect.yaml: job-lifecycle (the UI's parameter form) and the maintenance
        # flows with their schedules, next to the node deployments.
        steps.append(("--no-prompt", "deploy", "--all"))
    else:
        steps.append(("--no-prompt", "deploy", "--name", "sandboxed-train"))
    if lifecycle and not everything:
        steps.append(("--no-prompt", "deploy", "--name", "job-lifecycle"))
    for args in steps:
        prefect_cli(*args, env=env)


def register_block_types() -> list[str]:
    """Every block type of ``blocks`` on this process's Prefect API, as ``prefect block register -m blocks``
    does (in-process: no second interpreter): the UI's block catalog offers each, ready to fill in."""
    import blocks

    slugs = []
    for name in blocks.__all__:
        block_type = getattr(blocks, name)
        block_type.register_type_and_schema()
        slugs.append(str(block_type.get_block_type_slug()))
    return slugs
