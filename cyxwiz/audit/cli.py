"""``cyxwiz audit``: verify the log, prove events and checkpoints, tail and query it (SPEC H3, H4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cyxwiz._cli import new_app
from cyxwiz.audit.events import EventType, Outcome
from cyxwiz.audit.query import EventFilter, parse_time, query, tail
from cyxwiz.audit.reader import StoredEvent
from cyxwiz.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from solders.pubkey import Pubkey

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


PublicKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--public-key",
        envvar="CYXWIZ_AUDIT_PUBLIC_KEY",
        help="The pinned audit key: Ed25519 public key PEM, certificate, or the 0600 private key.",
        show_default=False,
    ),
]


def _pinned(public_key: Path | None) -> Ed25519PublicKey:
    from cyxwiz.audit.digest import load_public_key

    if public_key is None:
        raise ConfigError(
            "verification needs the pinned audit public key (never the key a file carries)",
            field="--public-key",
            rule="H4",
            hint="pass --public-key FILE or set CYXWIZ_AUDIT_PUBLIC_KEY",
        )
    return load_public_key(public_key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no such {what} file", path=str(path)) from None


@app.command()
def verify(
    *,
    path: PathArg = None,
    public_key: PublicKeyOpt = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint", help="A signed checkpoint you kept earlier (repeatable): must still hold."
        ),
    ] = None,
    anchors: Annotated[
        bool, typer.Option("--anchors", help="Also check the checkpoints anchored on the ledger.")
    ] = False,
    anchor_key: Annotated[
        str | None,
        typer.Option(
            "--anchor-key",
            envvar="CYXWIZ_AUDIT_ANCHOR_PUBKEY",
            help="The pinned anchoring wallet (base58 public key) whose memos count.",
            show_default=False,
        ),
    ] = None,
    rpc_url: Annotated[
        str | None,
        typer.Option(
            "--rpc-url",
            help="Ledger JSON-RPC URL (default: rpc_url of $CYXWIZ_LEDGER_CONFIG).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Check every record, the chain, the signed digests, the Merkle tree and every signed checkpoint
    (and, with --anchors, every checkpoint root anchored on the ledger).

    Exit 0 when intact; exit 1 and name the first broken link (file:line) otherwise.
    """
    from cyxwiz.audit.verify import verify_log

    key = _pinned(public_key)
    kept = [_read(p, "checkpoint") for p in checkpoint or []]
    directory = _path(path)
    if anchors:
        from cyxwiz.audit.anchor import verify_with_anchors

        pinned, url = _anchor_target(anchor_key, rpc_url)
        report = verify_with_anchors(
            directory, public_key=key, anchor_key=pinned, rpc_url=url, checkpoints=kept
        )
    else:
        report = verify_log(directory, public_key=key, checkpoints=kept)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for warning in report.warnings:
            typer.echo(f"warning: {warning}", err=True)
        if report.ok:
            signed = report.checkpoint
            head = f"; checkpoint size {signed['size']} root {signed['root']}" if signed else ""
            typer.echo(
                f"OK: {report.records} records in {report.files} files over {len(report.days)} days; "
                f"{report.checkpoints_checked} signed checkpoints hold{head}"
                + (f"; {report.anchors_checked} anchors on the ledger hold" if anchors else "")
            )
        else:
            typer.echo(f"BROKEN: {report.first}")
            for problem in report.problems[1:20]:
                typer.echo(f"  also: {problem}")
            if len(report.problems) > 20:
                typer.echo(f"  … {len(report.problems) - 20} more")
    if not report.ok:
        raise typer.Exit(1)


def _anchor_target(anchor_key: str | None, rpc_url: str | None) -> tuple[Pubkey, str]:
    from solders.pubkey import Pubkey

    if not anchor_key:
        raise ConfigError(
            "--anchors needs the pinned anchoring wallet",
            field="--anchor-key",
            rule="H4",
            hint="pass --anchor-key PUBKEY or set CYXWIZ_AUDIT_ANCHOR_PUBKEY",
        )
    try:
        pinned = Pubkey.from_string(anchor_key)
    except ValueError:
        raise ConfigError("not a base58 public key", field="--anchor-key") from None
    if rpc_url is None:
        from cyxwiz.ledger.config import LedgerConfig

        rpc_url = LedgerConfig.from_env().rpc_url
    return pinned, rpc_url


@app.command()
def prove(
    event_id: Annotated[str, typer.Argument(help="The event's event_id (or seq:N).")],
    *,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", envvar="CYXWIZ_AUDIT_DIR", help="Log directory.", show_default=False),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Prove against this checkpoint (default: the latest).")
    ] = None,
    public_key: PublicKeyOpt = None,
) -> None:
    """Print an inclusion proof (JSON bundle) of one event under the latest signed checkpoint.

    Anyone holding the audit public key checks it offline with `cyxwiz audit check-proof`.
    """
    from cyxwiz.audit.proofs import check_bundle, prove_inclusion

    note = _read(checkpoint, "checkpoint") if checkpoint is not None else None
    bundle = prove_inclusion(_path(directory), event_id, checkpoint=note)
    if public_key is not None:
        check_bundle(bundle, public_key=_pinned(public_key))
    typer.echo(json.dumps(bundle, indent=2))


@app.command()
def consistency(
    old: Annotated[Path, typer.Argument(help="An older signed checkpoint file.")],
    new: Annotated[Path, typer.Argument(help="A newer signed checkpoint file (e.g. DIR/checkpoint).")],
    *,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", envvar="CYXWIZ_AUDIT_DIR", help="Log directory.", show_default=False),
    ] = None,
    public_key: PublicKeyOpt = None,
) -> None:
    """Print a consistency proof that OLD is a prefix of NEW (exit 1 if it is not)."""
    from cyxwiz.audit.proofs import check_bundle, prove_consistency
    from cyxwiz.errors import AuditIntegrityError

    bundle = prove_consistency(_path(directory), _read(old, "checkpoint"), _read(new, "checkpoint"))
    try:
        if public_key is not None:
            check_bundle(bundle, public_key=_pinned(public_key))
        else:  # the Merkle part still holds or not; the signatures need the pinned key
            _check_unsigned_consistency(bundle)
    except AuditIntegrityError as exc:
        typer.echo(f"NOT CONSISTENT: {exc.message}")
        raise typer.Exit(1) from None
    typer.echo(json.dumps(bundle, indent=2))


def _check_unsigned_consistency(bundle: dict[str, object]) -> None:
    import base64

    from cyxwiz.audit.checkpoint import parse_unverified
    from cyxwiz.audit.merkle import verify_consistency
    from cyxwiz.errors import AuditIntegrityError

    _, old_size, old_root = parse_unverified(str(bundle["old"]).encode())
    _, new_size, new_root = parse_unverified(str(bundle["new"]).encode())
    proof = [base64.b64decode(str(p)) for p in bundle["proof"]]  # type: ignore[attr-defined]
    if not verify_consistency(
        old_size=old_size, new_size=new_size, old_root=old_root, new_root=new_root, proof=proof
    ):
        raise AuditIntegrityError(f"size {old_size} is not a prefix of size {new_size}", rule="H4")


@app.command("check-proof")
def check_proof(
    bundle_file: Annotated[Path, typer.Argument(help="A bundle printed by prove or consistency.")],
    *,
    public_key: PublicKeyOpt = None,
) -> None:
    """Verify a proof bundle offline: checkpoint signature(s) by the pinned key, then the Merkle proof."""
    from cyxwiz.audit.proofs import check_bundle, load_bundle
    from cyxwiz.errors import AuditIntegrityError

    bundle = load_bundle(bundle_file)
    try:
        cp = check_bundle(bundle, public_key=_pinned(public_key))
    except AuditIntegrityError as exc:
        typer.echo(f"INVALID: {exc.message}")
        raise typer.Exit(1) from None
    typer.echo(
        f"OK: {bundle['type']} proof holds under the signed checkpoint of size {cp.size} ({cp.origin})"
    )


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
