"""Helpers that tamper with log files in place (plain or gzipped), for the verify tests."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

from cyxwiz.audit.records import build_line, parse_line


def edit_lines(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    """Apply ``change`` to the list of lines (with newlines) of a .jsonl or .jsonl.gz file."""
    gz = path.name.endswith(".gz")
    data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    lines = change(data.splitlines(keepends=True))
    out = b"".join(lines)
    path.write_bytes(gzip.compress(out, mtime=0) if gz else out)


def rehash(line: bytes, **event_changes: object) -> bytes:
    """The line with event fields changed and its hash recomputed (an attacker who knows the format)."""
    import json

    rec = parse_line(line.rstrip(b"\n"))
    event = dict(rec.event)
    event.update(event_changes)
    new, _ = build_line(rec.seq, rec.prev, json.dumps(event, separators=(",", ":")).encode())
    return new
