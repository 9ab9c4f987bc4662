"""Atomic file writes with the modes A4 asks for (keys 0600, certificates/bundles/CRLs 0644).

The file is created under a temporary name in the target directory with its final mode already set by
``os.open`` (so a key is never group- or world-readable, not even for an instant), fsynced, then moved
into place. Without ``overwrite`` the move is a hard link, which fails if the target exists: no
check-then-write race can clobber an existing key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cyxwiz.errors import ConflictError, PKIError

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically with exactly ``mode`` (umask does not widen or narrow it)."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise PKIError("directory does not exist", path=str(directory), rule="A4")
    if not overwrite and target.exists():
        raise ConflictError(
            "refusing to overwrite an existing file", path=str(target), rule="A4", hint="pass --force"
        )
    tmp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        # fchmod: the mode given to os.open is filtered by the umask; we want exactly ``mode``.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=True) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise ConflictError(
                    "refusing to overwrite an existing file", path=str(target), rule="A4", hint="pass --force"
                ) from None
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def read_bytes(path: str | os.PathLike[str], *, what: str) -> bytes:
    """Read a file, turning OS errors into one clear PKIError naming the file."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{what} file not found", path=str(path)) from None
    except IsADirectoryError:
        raise PKIError(f"{what} path is a directory", path=str(path)) from None
    except PermissionError:
        raise PKIError(f"{what} file is not readable by this user", path=str(path)) from None
