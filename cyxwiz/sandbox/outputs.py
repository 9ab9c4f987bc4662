"""Collecting a job's /output on the host without trusting it (SPEC E2, E5).

The job controlled every byte and every directory entry of its output dir. :func:`collect_outputs`
walks it without following symlinks and refuses anything that is not a plain directory or regular
file (a symlink to ``/etc/shadow`` left for the uploader is an attack, not an output), re-checks each
file after opening it with ``O_NOFOLLOW``, and enforces the output cap while hashing.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cyxwiz.errors import LimitExceededError, PathRuleError
from cyxwiz.sandbox.paths import check_relative_path, open_confined
from cyxwiz.sandbox.result import SandboxResult


@dataclass(frozen=True)
class OutputFile:
    path: str  # relative to /output, POSIX separators
    size: int
    sha256: str


def collect_outputs(
    source: SandboxResult | Path, *, max_bytes: int, max_files: int = 100_000
) -> list[OutputFile]:
    """Hash every regular file under the output dir; raise on symlinks, special files or over-size.

    Given a :class:`SandboxResult`, refuses unless the run ended ``ok`` (partial output is not trusted).
    """
    if isinstance(source, SandboxResult):
        if not source.output_trusted:
            raise LimitExceededError(
                f"job ended {source.status} ({source.reason}): its output is not trusted", rule="E2"
            )
        root = source.output_dir
    else:
        root = Path(source)
    files: list[OutputFile] = []
    total = 0
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                check_relative_path(rel, field="output")
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    stack.append(rel)
                    continue
                if not stat.S_ISREG(mode):
                    kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                    raise PathRuleError(f"output holds a {kind}: {rel}", field="output", path=rel, rule="E5")
                if len(files) >= max_files:
                    raise LimitExceededError(f"more than {max_files} output files", field="output", rule="E2")
                if total + st.st_size > max_bytes:
                    raise LimitExceededError(
                        f"output larger than {max_bytes} bytes", field="output", rule="E2"
                    )
                fd = open_confined(root, rel, field="output")
                digest = hashlib.sha256()
                size = 0
                with os.fdopen(fd, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        size += len(chunk)
                        if total + size > max_bytes:
                            raise LimitExceededError(f"output larger than {max_bytes} bytes", rule="E2")
                        digest.update(chunk)
                total += size
                files.append(OutputFile(rel, size, digest.hexdigest()))
    return sorted(files, key=lambda f: f.path)
