"""Small private file helpers: atomic 0600 writes and the group/other-readable refusal (A4)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cyxwiz.errors import KeyPermissionError


def write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_private(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can read (A4)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyPermissionError(
            f"mode {stat.S_IMODE(mode):04o} lets group/others read a secret",
            path=str(path),
            rule="A4",
            hint=f"chmod 600 {path}",
        )
    return path.read_bytes()
