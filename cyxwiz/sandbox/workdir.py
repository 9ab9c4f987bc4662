"""Per-job work directory (SPEC E4, E7): 0700, with the job's /output and its bridge socket dir.

Layout under ``root`` (created by :meth:`JobDir.create`, refused if it already holds anything)::

    root/            0700, owned by the node (the job never sees it)
      output/        0700, owned by the sandbox uid -> /output (rw)
      bridge/        0700, owned by the sandbox uid -> /run/cyxwiz (ro; holds bridge.sock, 0600)
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cyxwiz.errors import SandboxError, ValidationError


@dataclass(frozen=True)
class JobDir:
    root: Path
    output: Path
    bridge_dir: Path
    inputs: Path | None
    uid: int
    gid: int
    name: str

    @property
    def socket_path(self) -> Path:
        return self.bridge_dir / "bridge.sock"

    @classmethod
    def create(cls, root: Path, *, uid: int, gid: int, inputs: Path | None = None) -> JobDir:
        root = Path(root)
        if root.exists() and (root.is_symlink() or not root.is_dir() or any(root.iterdir())):
            raise ValidationError(
                "work dir must be new or empty (a reused dir could leak another job's files)",
                path=str(root),
                rule="E7",
            )
        if inputs is not None:
            inputs = Path(inputs)
            if not inputs.is_dir():
                raise ValidationError("inputs must be a directory", path=str(inputs), field="inputs")
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # mkdir's mode is masked by umask
        # An AF_UNIX path is limited to 108 bytes; a deep tmp dir must not break the bridge.
        if len(os.fsencode(root / "bridge" / "bridge.sock")) > 100:
            raise ValidationError("work dir path too long for the bridge socket", path=str(root), rule="E4")
        output = root / "output"
        bridge = root / "bridge"
        for d in (output, bridge):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)
            if os.geteuid() == 0:
                os.chown(d, uid, gid)
        return cls(
            root=root.resolve(),
            output=output.resolve(),
            bridge_dir=bridge.resolve(),
            inputs=inputs.resolve() if inputs else None,
            uid=uid,
            gid=gid,
            name=f"job-{secrets.token_hex(8)}",
        )

    def output_size(self, *, cap: int | None = None) -> int:
        """Bytes under /output (regular files, not following symlinks); stops counting past ``cap``."""
        return tree_size(self.output, cap=cap)


def tree_size(root: Path, *, cap: int | None = None) -> int:
    total = 0
    stack = [str(root)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        # st_size, not blocks: a sparse file counts at the size it claims (and would upload).
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if cap is not None and total > cap:
                    return total
    return total


def ensure_private(path: Path) -> None:
    """Refuse to use a dir others can read (a job dir must be 0700, E4)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SandboxError(f"job directory is mode {mode:o}, must be 0700", path=str(path), rule="E4")
