"""``cyxwiz audit``: verify the chain, tail and query the security log (SPEC H3, H4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cyxwiz._cli import new_app
from cyxwiz.audit.events import EventType, Outcome
from cyxwiz.audit.query import EventFilter, parse_time, query, tail
from cyxwiz.audit.reader import StoredEvent
from cyxwiz.errors import ConfigError

app = new_app(help="Security audit log: verify its hash chain and signed digests, tail and query events.")

_PATH_HELP = "Log directory (or one day file); default $CYXWIZ_AUDIT_DIR."
PathArg = Annotated[
    Path | None, typer.Argument(envvar="CYXWIZ_AUDIT_DIR", help=_PATH_HELP, show_default=False)
]
TypeOpt = Annotated[
    str | None,
    typer.Option("--type", "-t", help="Authentication, Authorization, DataAccess, Configuration or Payment."),
]
ActorOpt = Annotated[str | None, typer.Option("--actor", "-a", help="Exact actor id.")]
OutcomeOpt = Annotated[str | None, typer.Option("--outcome", "-o", help="success, failure, denied or error.")]
ActionOpt = Annotated[
    str | None, typer.Option("--action", help="Action prefix, e.g. token. or escrow.release.")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="From this time: ISO date/time (UTC) or an age like 2h, 7d.")
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Before this time: ISO date/time (UTC) or an age.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")]


def _path(path: Path | None) -> Path:
    if path is None:
        raise ConfigError("no log given", field="PATH", hint="pass PATH or set CYXWIZ_AUDIT_DIR")
    return path


@app.command()
def verify(
    *,
    path: PathArg = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Pin the digest signer: Ed25519 public key PEM or certificate."),
    ] = None,
    require_signed: Annotated[
        bool, typer.Option("--require-signed", help="Treat unsigned digests as broken.")
    ] = False,
    retention_days: Annotated[
        int, typer.Option("--retention-days", help="Days kept locally (older days may be pruned).")
    ] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Check every record's hash, the chain, the sequence and the signed daily digests.

    Exit 0 when intact; exit 1 and name the first broken link (file:line) otherwise.
    """
    from cyxwiz.audit.digest import load_public_key
    from cyxwiz.audit.verify import verify_log

    key = load_public_key(public_key) if public_key is not None else None
    report = verify_log(
        _path(path), public_key=key, require_signed=require_signed, retention_days=retention_days
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for warning in report.warnings:
            typer.echo(f"warning: {warning}", err=True)
        if report.ok:
            typer.echo(f"OK: {report.records} records in {report.files} files over {len(report.days)} days")
        else:
            typer.echo(f"BROKEN: {report.first}")
            for problem in report.problems[1:20]:
                typer.echo(f"  also: {problem}")
            if len(report.problems) > 20:
                typer.echo(f"  … {len(report.problems) - 20} more")
    if not report.ok:
        raise typer.Exit(1)


def _filter(
    *,
    event_type: str | None,
    actor: str | None,
    outcome: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
) -> EventFilter:
    from cyxwiz.errors import ValidationError

    try:
        etype = EventType(event_type) if event_type else None
    except ValueError:
        choices = ", ".join(t.value for t in EventType)
        raise ValidationError(
            f"unknown event type {event_type!r} (one of {choices})", field="--type"
        ) from None
    try:
        out = Outcome(outcome) if outcome else None
    except ValueError:
        choices = ", ".join(o.value for o in Outcome)
        raise ValidationError(f"unknown outcome {outcome!r} (one of {choices})", field="--outcome") from None
    return EventFilter(
        event_type=etype,
        actor=actor,
        outcome=out,
        action=action,
        since=parse_time(since, field="--since") if since else None,
        until=parse_time(until, field="--until") if until else None,
    )


def _warn(errors: list[str]) -> None:
    for error in errors:
        typer.echo(f"warning: skipped {error} (run `cyxwiz audit verify`)", err=True)


def _show(found: list[StoredEvent], as_json: bool) -> None:
    if as_json:
        for stored in found:
            typer.echo(
                json.dumps({"file": stored.file, "line": stored.line, "seq": stored.seq, **stored.event})
            )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("seq", "time (UTC)", "type", "actor", "action", "resource", "outcome", "ip"):
        table.add_column(column, overflow="fold")
    for stored in found:
        ev = stored.event
        stamp = str(ev.get("timestamp", ""))[:19].replace("T", " ")
        outcome = str(ev.get("outcome", ""))
        style = "" if outcome == "success" else "red"
        table.add_row(
            str(stored.seq),
            stamp,
            str(ev.get("event_type", "")),
            f"{ev.get('actor_type', '')}:{ev.get('actor_id', '')}",
            str(ev.get("action", "")),
            str(ev.get("resource", "")),
            f"[{style}]{outcome}[/{style}]" if style else outcome,
            str(ev.get("ip_address") or ""),
        )
    Console(width=200).print(table)


@app.command("tail")
def tail_command(
    *,
    path: PathArg = None,
    count: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many events.")] = 20,
    event_type: TypeOpt = None,
    actor: ActorOpt = None,
    outcome: OutcomeOpt = None,
    action: ActionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the last events (filters as for query)."""
    flt = _filter(
        event_type=event_type, actor=actor, outcome=outcome, action=action, since=since, until=until
    )
    errors: list[str] = []
    found = tail(_path(path), flt, count=count, errors=errors)
    _warn(errors)
    _show(found, as_json)


@app.command("query")
def query_command(
    *,
    path: PathArg = None,
    event_type: TypeOpt = None,
    actor: ActorOpt = None,
    outcome: OutcomeOpt = None,
    action: ActionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Stop after this many events.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find events by type, actor, outcome, action and time range (oldest first)."""
    flt = _filter(
        event_type=event_type, actor=actor, outcome=outcome, action=action, since=since, until=until
    )
    errors: list[str] = []
    found = query(_path(path), flt, limit=limit, errors=errors)
    _warn(errors)
    _show(found, as_json)
