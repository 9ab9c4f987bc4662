"""Path rules for everything a job names over the bridge (SPEC E5).

A path is refused (``PathRuleError`` naming the rule) when it is not a string, is empty or too long,
holds NUL or control characters, a backslash or percent-encoding (odd encodings), is not NFC-normalised
Unicode or holds lone surrogates, is absolute, has empty, ``.`` or ``..`` components, or — once symlinks
are resolved — leaves the directory it must stay in. :func:`open_confined` opens the file and checks
the *opened* file's real path, so swapping a symlink between check and open does not help.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from pathlib import Path, PurePosixPath

from cyxwiz.errors import PathRuleError

MAX_PATH_CHARS = 1024
MAX_COMPONENT_BYTES = 255
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def check_relative_path(raw: object, *, field: str = "path") -> PurePosixPath:  # noqa: PLR0912 (flat rule list)
    """Syntax rules only (no filesystem access): returns the normalised relative path."""
    if not isinstance(raw, str):
        raise PathRuleError("must be a string", field=field, rule="E5")
    if not raw:
        raise PathRuleError("must not be empty", field=field, rule="E5")
    if len(raw) > MAX_PATH_CHARS:
        raise PathRuleError(f"longer than {MAX_PATH_CHARS} characters", field=field, rule="E5")
    if "\x00" in raw:
        raise PathRuleError("contains a NUL byte", field=field, rule="E5")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise PathRuleError("contains control characters", field=field, rule="E5")
    if "\\" in raw:
        raise PathRuleError("contains a backslash", field=field, rule="E5")
    if _PERCENT.search(raw):
        raise PathRuleError("contains percent-encoding", field=field, rule="E5")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise PathRuleError("is not valid Unicode (lone surrogate)", field=field, rule="E5") from None
    if unicodedata.normalize("NFC", raw) != raw:
        raise PathRuleError("is not NFC-normalised Unicode", field=field, rule="E5")
    if raw.startswith("/") or raw.startswith("~"):
        raise PathRuleError("must be relative", field=field, rule="E5")
    parts = raw.split("/")
    for part in parts:
        if part in ("", "."):
            raise PathRuleError("has an empty or '.' component", field=field, rule="E5")
        if part == "..":
            raise PathRuleError("climbs with '..'", field=field, rule="E5")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise PathRuleError(
                f"a component is longer than {MAX_COMPONENT_BYTES} bytes", field=field, rule="E5"
            )
    return PurePosixPath(*parts)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_confined(root: Path, raw: object, *, field: str = "path") -> Path:
    """Rules + symlink resolution: the real path, refused when it leaves ``root``."""
    rel = check_relative_path(raw, field=field)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / rel))
    if not _inside(real, real_root):
        raise PathRuleError("resolves outside the job directory (symlink escape)", field=field, rule="E5")
    return real


def open_confined(root: Path, raw: object, *, field: str = "path", max_bytes: int | None = None) -> int:
    """Open a regular file under ``root`` read-only and return the fd (caller closes it)."""
    real = resolve_confined(root, raw, field=field)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PathRuleError("does not exist", field=field, rule="E5") from None
    except OSError as exc:
        raise PathRuleError(f"cannot be opened: {exc.strerror}", field=field, rule="E5") from None
    try:
        # Re-check what was actually opened: a symlink swapped in after resolve_confined is caught here.
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not _inside(opened, Path(os.path.realpath(root))):
            raise PathRuleError("resolves outside the job directory (symlink escape)", field=field, rule="E5")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathRuleError("is not a regular file", field=field, rule="E5")
        if max_bytes is not None and st.st_size > max_bytes:
            raise PathRuleError(f"is larger than {max_bytes} bytes", field=field, rule="E5")
    except BaseException:
        os.close(fd)
        raise
    return fd
