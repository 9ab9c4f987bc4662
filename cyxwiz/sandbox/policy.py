"""SandboxPolicy: the one policy every backend obeys (SPEC E1, E3), and the backend Protocol."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cyxwiz.errors import ValidationError

if TYPE_CHECKING:
    from cyxwiz.sandbox.bridge import BridgeServer
    from cyxwiz.sandbox.limits import JobLimits
    from cyxwiz.sandbox.result import SandboxResult
    from cyxwiz.sandbox.workdir import JobDir

NOBODY = 65534

#: Where things appear inside every sandbox.
INPUT_DIR = "/input"
OUTPUT_DIR = "/output"
BRIDGE_DIR = "/run/cyxwiz"
BRIDGE_SOCKET = f"{BRIDGE_DIR}/bridge.sock"

#: Host files a Python runtime needs from /etc; nothing else of /etc is visible (no passwd hashes, no keys).
ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime", "nsswitch.conf", "mime.types")


def runtime_paths() -> tuple[Path, ...]:
    """Read-only host paths the project's interpreter, venv and ``cyxwiz`` package need."""
    import cyxwiz

    paths = {Path("/usr"), Path(sys.base_prefix), Path(sys.prefix), Path(cyxwiz.__file__).resolve().parent}
    # Drop paths already inside another one (e.g. a venv under /usr).
    ordered = sorted(paths, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in ordered:
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return tuple(kept)


@dataclass(frozen=True, kw_only=True)
class SandboxPolicy:
    """What every sandbox guarantees. Fields exist to be *read* by backends and by ``sandbox check``;
    the constructor refuses weakening the non-negotiable ones (E1)."""

    uid: int = NOBODY
    gid: int = NOBODY
    network: bool = False
    read_only_root: bool = True
    drop_all_capabilities: bool = True
    no_new_privileges: bool = True
    seccomp: bool = True
    #: Run even when memory/pids cannot be limited by a cgroup (pids falls back to RLIMIT_NPROC);
    #: the result's ``enforcement`` says so. Off by default: a node must not silently run unlimited.
    allow_degraded: bool = False
    #: Docker: OCI runtime ("runc" default, "runsc" = gVisor for hostile code).
    runtime: str = "runc"
    image: str = "cyxwiz-sandbox:latest"
    #: Extra read-only host paths (e.g. a dataset cache); each appears at the same path inside.
    extra_ro_paths: tuple[Path, ...] = ()
    ro_paths: tuple[Path, ...] = field(default_factory=runtime_paths)
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("network",):
            if getattr(self, name):
                raise ValidationError("the sandbox never has network access", field=name, rule="E1")
        for name in ("read_only_root", "drop_all_capabilities", "no_new_privileges", "seccomp"):
            if not getattr(self, name):
                raise ValidationError("this protection cannot be turned off", field=name, rule="E1")
        if self.uid == 0 or self.gid == 0:
            raise ValidationError("jobs never run as root", field="uid", rule="E1")
        if self.runtime not in ("runc", "runsc"):
            raise ValidationError(f"unknown runtime {self.runtime!r}", field="runtime", rule="E3")
        for p in (*self.extra_ro_paths, *self.ro_paths):
            if not Path(p).is_absolute():
                raise ValidationError(f"read-only path must be absolute: {p}", field="extra_ro_paths")


class SandboxBackend(Protocol):
    """A way to run one job under a :class:`SandboxPolicy` (bubblewrap, docker, docker+runsc)."""

    name: str

    def probe(self) -> tuple[bool, str]:
        """(usable here, why not / what it is)."""
        ...

    def run(
        self,
        *,
        argv: Sequence[str],
        job: JobDir,
        limits: JobLimits,
        env: Mapping[str, str],
        bridge: BridgeServer | None,
    ) -> SandboxResult: ...
