"""``cyxwiz store``: list, fetch (verified, decrypted), upload and verify archived objects (SPEC D2, D3)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from cyxwiz._cli import new_app

app = new_app(help="Object store: ls, get (verified, decrypted), put, verify a job's archive, keygen.")

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="s3://bucket/prefix, file:///dir or a directory (default: $CYXWIZ_STORE_URL, "
        "$CYXWIZ_S3_BUCKET or $CYXWIZ_STORE_ROOT). Master key: $CYXWIZ_STORE_MASTER_KEY[_FILE].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command("ls")
def ls(
    prefix: Annotated[str, typer.Argument(help="Key prefix, e.g. jobs/JOB/ (default: everything).")] = "",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List objects with size, SHA-256 and encryption (metadata checked, bodies not re-hashed)."""
    from cyxwiz.storage.config import open_store

    infos = open_store(store).list(prefix)
    if as_json:
        typer.echo(json.dumps([_info_dict(i) for i in infos], indent=2))
        return
    for info in infos:
        lock = "enc" if info.encrypted else "-"
        typer.echo(f"{info.size:>12}  {info.sha256[:16]}  {lock:<3}  {info.key}")


def _info_dict(info: object) -> dict[str, object]:
    from cyxwiz.storage.model import ObjectInfo

    assert isinstance(info, ObjectInfo)
    return {
        "key": info.key,
        "size": info.size,
        "sha256": info.sha256,
        "stored_size": info.stored_size,
        "stored_sha256": info.stored_sha256,
        "encryption": info.encryption,
    }


@app.command()
def get(
    key: Annotated[str, typer.Argument(help="Object key, e.g. jobs/JOB/outputs/model.safetensors.")],
    dest: Annotated[Path, typer.Argument(help="File to write (mode 0600), or - for stdout.")],
    store: StoreOpt = None,
) -> None:
    """Download an object: bytes re-hashed, decrypted when encrypted; nothing written if a check fails."""
    from cyxwiz.storage.config import open_store

    target = open_store(store)
    if str(dest) == "-":
        sys.stdout.buffer.write(target.get_bytes(key))
        sys.stdout.buffer.flush()
        return
    with _progress(f"get {key}") as progress:
        info = target.get_file(key, dest, progress=progress)
    typer.echo(f"{dest}: {info.size} bytes, sha256 {info.sha256} (verified)", err=True)


@app.command()
def put(
    src: Annotated[Path, typer.Argument(help="File to upload.", exists=True, dir_okay=False)],
    key: Annotated[str, typer.Argument(help="Object key, e.g. jobs/JOB/inputs/train.npz.")],
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Client-side AES-256-GCM envelope encryption (D2).")
    ] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a file (streamed, multipart on S3) with its SHA-256 recorded and sent as a checksum."""
    from cyxwiz.storage.config import open_store

    with _progress(f"put {key}") as progress:
        info = open_store(store).put_file(key, src, encrypt=encrypt, progress=progress)
    if as_json:
        typer.echo(json.dumps(_info_dict(info), indent=2))
    else:
        typer.echo(f"{info.key}: {info.size} bytes, sha256 {info.sha256}{' (encrypted)' if encrypt else ''}")


@app.command()
def verify(
    job_id: Annotated[str | None, typer.Argument(help="Job whose archive (jobs/JOB/) to verify.")] = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help="Verify this prefix instead.")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash (and decrypt) every object of a job and check it against the signed manifest.

    Exit status 1 when any object is altered, missing, planted or unlisted.
    """
    from cyxwiz.errors import ValidationError
    from cyxwiz.storage import layout
    from cyxwiz.storage.config import open_store

    if (job_id is None) == (prefix is None):
        raise ValidationError("give a job id or --prefix (one of them)", field="job_id")
    scope = layout.job_prefix(job_id) if job_id is not None else (prefix or "")
    report = open_store(store).verify(scope)
    if as_json:
        doc = {
            "prefix": report.prefix,
            "ok": report.ok,
            "checked": [_info_dict(i) for i in report.checked],
            "problems": [{"key": p.key, "code": p.code, "message": p.message} for p in report.problems],
        }
        typer.echo(json.dumps(doc, indent=2))
    else:
        for problem in report.problems:
            typer.echo(f"FAIL {problem.key}: {problem.code}: {problem.message}")
        state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        typer.echo(f"{scope}: {len(report.checked)} object(s) verified, {state}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def keygen(
    path: Annotated[Path, typer.Argument(help="Master key file to create (mode 0600, hex).")],
) -> None:
    """Create a new store master key file (the key that wraps every object's data key)."""
    from cyxwiz.storage.crypto import MasterKey

    key = MasterKey.generate()
    key.write(path)
    typer.echo(f"wrote master key {key.key_id.hex()} to {path}; set CYXWIZ_STORE_MASTER_KEY_FILE={path}")
