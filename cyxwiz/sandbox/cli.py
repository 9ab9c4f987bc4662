"""``cyxwiz sandbox``: check this host's sandbox backends, run a command under the sandbox policy."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cyxwiz._cli import new_app

app = new_app(help="Sandbox for untrusted training code: check the host's backends, run a command confined.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
def check(
    *,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            help="Backend the node is configured for (default $CYXWIZ_SANDBOX_BACKEND "
            "or bubblewrap); exit 1 when it is unusable.",
        ),
    ] = None,
    live: Annotated[
        bool, typer.Option("--live/--no-live", help="Run a probe job in each usable backend.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Which backends work here and which protections are really active (user namespaces, seccomp,
    cgroup version and controllers, no-new-privs, runtime)."""
    from cyxwiz.sandbox.check import check_host

    report = check_host(configured=backend, live=live)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        host = Table("host", "value", title="host")
        for key, value in report.facts.items():
            host.add_row(key, value)
        console.print(host)
        table = Table("backend", "usable", "detail", "live probe", title="backends")
        for b in report.backends:
            probe = ", ".join(f"{k}={v}" for k, v in b.live.items() if not k.startswith("enforced."))
            table.add_row(
                b.name + (" (configured)" if b.name == report.configured else ""),
                "yes" if b.usable else "NO",
                b.detail,
                probe,
            )
        console.print(table)
    if not report.configured_usable:
        typer.echo(f"error: configured backend {report.configured} is not usable on this host", err=True)
        raise typer.Exit(1)


@app.command()
def run(
    cmd: Annotated[list[str], typer.Argument(help="Command and arguments (after --); never run by a shell.")],
    *,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="bubblewrap, docker or gvisor.")
    ] = "bubblewrap",
    memory: Annotated[str, typer.Option("--memory", help="Memory limit, e.g. 2G.")] = "16G",
    cpus: Annotated[float, typer.Option("--cpus", help="CPU cores.")] = 4.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Wall-time limit in seconds.")] = 3600.0,
    pids: Annotated[int, typer.Option("--pids", help="Process/thread limit.")] = 512,
    output_limit: Annotated[str, typer.Option("--output-limit", help="Cap on /output, e.g. 1G.")] = "1G",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Job work dir (new or empty); /output is DIR/output."),
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option("--input", "-i", help="Directory mounted read-only at /input.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run CMD under the sandbox policy and print how it ended (reason, limits hit, output size).

    Exit status: 0 when the job ended "ok", 1 otherwise."""
    from cyxwiz.sandbox.api import run_sandboxed
    from cyxwiz.sandbox.limits import JobLimits, parse_size

    limits = JobLimits(
        memory_bytes=parse_size(memory, field="--memory"),
        cpu_cores=cpus,
        wall_seconds=timeout,
        pids=pids,
        output_bytes=parse_size(output_limit, field="--output-limit"),
    )
    workdir = output if output is not None else Path(tempfile.mkdtemp(prefix="cyxwiz-job-")) / "job"
    result = run_sandboxed(argv=cmd, workdir=workdir, limits=limits, backend=backend, inputs=inputs)
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2))
    else:
        typer.echo(f"status:       {result.status} ({result.reason})")
        typer.echo(f"exit code:    {result.exit_code}")
        typer.echo(f"limits hit:   {', '.join(result.limits_hit) or 'none'}")
        typer.echo(
            f"output:       {result.output_dir} ({result.output_bytes} bytes)"
            + ("" if result.output_trusted else " - NOT trusted")
        )
        typer.echo(f"wall time:    {result.wall_seconds:.2f} s")
        typer.echo(f"bridge:       {len(result.messages)} messages, {len(result.bridge_errors)} refused")
        if result.stdout_tail:
            typer.echo("--- stdout (tail) ---\n" + result.stdout_tail.rstrip())
        if result.stderr_tail:
            typer.echo("--- stderr (tail) ---\n" + result.stderr_tail.rstrip())
    if not result.ok:
        raise typer.Exit(1)
