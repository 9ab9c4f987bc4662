"""``cyxwiz demo``: the whole job lifecycle on the embedded defaults, shown step by step.

Grows with the project: each step runs only once its capability has landed, and the demo says which
steps are still to come.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def run_demo(*, workdir: str | Path, console: Console | None = None) -> None:
    console = console or Console()
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]cyxwiz demo[/bold] in {root.resolve()}")
    console.print(
        "Steps still to come: PKI, gateway, agent, escrow, sandboxed training, "
        "verification, release, archive."
    )
