"""Per-job cgroups for memory, pids and CPU limits (SPEC E2), on cgroup v1 and v2.

``RLIMIT_AS`` breaks PyTorch/CUDA (they reserve huge address ranges), so memory is limited by a cgroup.
The job's cgroup is created below the cgroup this process already lives in (the subtree a service manager
delegates to us), or below ``CYXWIZ_CGROUP_PARENT`` when set. Where no cgroup can be created (no root, no
delegation) :func:`open_job_cgroup` raises :class:`SandboxUnavailableError` naming why; callers decide
whether a degraded run is acceptable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from cyxwiz.errors import SandboxUnavailableError
from cyxwiz.sandbox.limits import JobLimits

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupInfo:
    """What this host offers (for ``cyxwiz sandbox check``)."""

    version: int  # 1, 2, or 0 = none usable
    controllers: tuple[str, ...]
    writable: bool
    detail: str


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for ctrl in ctrls.split(",") if ctrls else [""]:
            out[ctrl] = path
    return out


def detect() -> CgroupInfo:
    """Which cgroup version drives resource limits here, with which controllers, and can we write it."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        ctrls = tuple((CGROUP_ROOT / "cgroup.controllers").read_text().split())
        base = _v2_parent()
        ok = os.access(base, os.W_OK)
        return CgroupInfo(2, ctrls, ok, f"unified hierarchy, parent {base}")
    present = tuple(c for c in _V1_CONTROLLERS if (CGROUP_ROOT / c / "cgroup.procs").exists())
    if not present:
        return CgroupInfo(0, (), False, "no cgroup filesystem mounted")
    own = _own_paths()
    ok = all(os.access(_v1_parent(c, own), os.W_OK) for c in present if c in ("memory", "pids"))
    return CgroupInfo(1, present, ok, "legacy (v1) hierarchies")


def _v1_parent(ctrl: str, own: dict[str, str]) -> Path:
    override = os.environ.get("CYXWIZ_CGROUP_PARENT")
    rel = override if override else own.get(ctrl, "/")
    return CGROUP_ROOT / ctrl / rel.lstrip("/")


def _v2_parent() -> Path:
    override = os.environ.get("CYXWIZ_CGROUP_PARENT")
    rel = override if override else _own_paths().get("", "/")
    return CGROUP_ROOT / rel.lstrip("/")


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    return out


@dataclass
class JobCgroup:
    """The cgroup(s) of one job; :meth:`add` moves a process in, :meth:`kill` ends everything in it."""

    version: int
    dirs: dict[str, Path]  # controller -> dir (v2: {"": dir})
    enforced: dict[str, str] = field(default_factory=dict)

    def add(self, pid: int) -> None:
        for d in self.dirs.values():
            _write(d / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def kill(self) -> None:
        """SIGKILL every process of the job, including ones forked while we kill (E2 watchdog)."""
        if self.version == 2:
            kill_file = self.dirs[""] / "cgroup.kill"
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
                    return
        freezer = self.dirs.get("freezer")
        if freezer is not None:
            # Frozen tasks cannot fork, so one pass over cgroup.procs gets them all.
            with contextlib.suppress(OSError):
                _write(freezer / "freezer.state", "FROZEN")
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if freezer is not None:
                with contextlib.suppress(OSError):
                    _write(freezer / "freezer.state", "THAWED")  # SIGKILL is delivered on thaw
            time.sleep(0.01)

    def oom_killed(self) -> bool:
        if self.version == 2:
            return _read_kv(self.dirs[""] / "memory.events").get("oom_kill", 0) > 0
        mem = self.dirs.get("memory")
        if mem is None:
            return False
        ctl = _read_kv(mem / "memory.oom_control")
        return ctl.get("oom_kill", 0) > 0 or ctl.get("under_oom", 0) > 0

    def pids_limit_hit(self) -> bool:
        d = self.dirs[""] if self.version == 2 else self.dirs.get("pids")
        return d is not None and _read_kv(d / "pids.events").get("max", 0) > 0

    def peak_memory(self) -> int | None:
        if self.version == 2:
            path = self.dirs[""] / "memory.peak"
        else:
            mem = self.dirs.get("memory")
            if mem is None:
                return None
            path = mem / "memory.max_usage_in_bytes"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)  # the last task is still exiting


def open_job_cgroup(name: str, limits: JobLimits) -> JobCgroup:
    """Create the job's cgroup(s) with memory, swap, pids and CPU limits set; raises if impossible."""
    info = detect()
    if info.version == 0:
        raise SandboxUnavailableError(
            "no cgroup filesystem: memory and pids limits cannot be enforced", rule="E2"
        )
    try:
        if info.version == 2:
            return _open_v2(name, limits)
        return _open_v1(name, limits)
    except PermissionError as exc:
        raise SandboxUnavailableError(
            f"cannot create a job cgroup ({exc.filename}): not root and no delegated subtree",
            rule="E2",
            hint="run the node agent as root, or under systemd Delegate=yes with CYXWIZ_CGROUP_PARENT set",
        ) from None


def _open_v1(name: str, limits: JobLimits) -> JobCgroup:
    own = _own_paths()
    dirs: dict[str, Path] = {}
    group = JobCgroup(1, dirs)
    try:
        for ctrl in _V1_CONTROLLERS:
            if not (CGROUP_ROOT / ctrl / "cgroup.procs").exists():
                continue
            # Flat (no shared "cyxwiz" parent): a parent group would cap all jobs at one task's CPU share.
            d = _v1_parent(ctrl, own) / f"cyxwiz-{name}"
            d.mkdir(exist_ok=False)
            dirs[ctrl] = d
        if "memory" in dirs:
            _write(dirs["memory"] / "memory.limit_in_bytes", str(limits.memory_bytes))
            swap = dirs["memory"] / "memory.memsw.limit_in_bytes"
            if swap.exists():  # memory+swap = memory: the job may not spill to swap
                _write(swap, str(limits.memory_bytes))
            group.enforced["memory"] = "cgroup v1 memory.limit_in_bytes"
        if "pids" in dirs:
            _write(dirs["pids"] / "pids.max", str(limits.pids))
            group.enforced["pids"] = "cgroup v1 pids.max"
        if "cpu" in dirs:
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", str(int(limits.cpu_cores * _CPU_PERIOD_US)))
            # A cgroup competes with the host's loose tasks as ONE entity of weight 1024: without
            # shares scaled to its cores, a busy host would starve a multi-threaded job.
            _write(dirs["cpu"] / "cpu.shares", str(max(2, int(1024 * limits.cpu_cores))))
            group.enforced["cpu"] = "cgroup v1 cpu.cfs_quota_us"
    except BaseException:
        group.remove()
        raise
    return group


def _open_v2(name: str, limits: JobLimits) -> JobCgroup:
    parent = _v2_parent() / "cyxwiz"
    parent.mkdir(exist_ok=True)
    wanted = {"memory", "pids", "cpu"}
    available = set((parent / "cgroup.controllers").read_text().split())
    for ctrl in sorted(wanted & available):
        with contextlib.suppress(OSError):  # already enabled, or the parent is not ours to change
            _write(parent / "cgroup.subtree_control", f"+{ctrl}")
    d = parent / name
    d.mkdir(exist_ok=False)
    group = JobCgroup(2, {"": d})
    try:
        if (d / "memory.max").exists():
            _write(d / "memory.max", str(limits.memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            group.enforced["memory"] = "cgroup v2 memory.max"
        if (d / "pids.max").exists():
            _write(d / "pids.max", str(limits.pids))
            group.enforced["pids"] = "cgroup v2 pids.max"
        if (d / "cpu.max").exists():
            _write(d / "cpu.max", f"{int(limits.cpu_cores * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
            if (d / "cpu.weight").exists():
                _write(d / "cpu.weight", str(min(10_000, max(1, int(100 * limits.cpu_cores)))))
            group.enforced["cpu"] = "cgroup v2 cpu.max"
    except BaseException:
        group.remove()
        raise
    return group
