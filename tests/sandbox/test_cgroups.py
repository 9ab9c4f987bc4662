"""Job cgroups (SPEC E2) on this host's real hierarchy, and the v2 layout on a simulated tree
(this machine runs cgroup v1; most production hosts run v2)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cyxwiz.errors import SandboxUnavailableError
from cyxwiz.sandbox import cgroups
from cyxwiz.sandbox.limits import JobLimits, MiB


def test_real_job_cgroup_limits_and_kill() -> None:
    info = cgroups.detect()
    if not info.writable:
        pytest.skip(f"cannot create cgroups here: {info.detail}")
    limits = JobLimits(memory_bytes=256 * MiB, pids=16, cpu_cores=0.5)
    group = cgroups.open_job_cgroup("test-real", limits)
    try:
        proc = subprocess.Popen(["sleep", "60"])
        group.add(proc.pid)
        assert proc.pid in group.pids()
        if info.version == 1:
            assert int((group.dirs["memory"] / "memory.limit_in_bytes").read_text()) == 256 * MiB
            assert (group.dirs["pids"] / "pids.max").read_text().strip() == "16"
            assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        group.kill()
        assert proc.wait(timeout=5) == -9
        assert group.pids() == set()
    finally:
        group.kill()
        group.remove()
    assert not any(d.exists() for d in group.dirs.values())


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cgroup"
    parent = root / "system.slice" / "agent.service"
    parent.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (parent / "cgroup.controllers").write_text("cpu memory pids\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setenv("CYXWIZ_CGROUP_PARENT", "/system.slice/agent.service")
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kw: object) -> None:
        # The kernel populates a new cgroup's interface files; the simulation does the same.
        real_mkdir(self, *args, **kw)  # type: ignore[arg-type]
        for name in (
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.kill",
            "memory.max",
            "memory.swap.max",
            "memory.events",
            "pids.max",
            "pids.events",
            "cpu.max",
            "cpu.weight",
        ):
            (self / name).write_text("")
        (self / "cgroup.controllers").write_text("cpu memory pids\n")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    return parent


def test_v2_layout_and_limits(fake_v2: Path) -> None:
    assert cgroups.detect().version == 2
    group = cgroups.open_job_cgroup("job-v2", JobLimits(memory_bytes=512 * MiB, pids=32, cpu_cores=2))
    d = fake_v2 / "cyxwiz" / "job-v2"
    assert group.dirs == {"": d}
    assert (d / "memory.max").read_text() == str(512 * MiB)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "32"
    assert (d / "cpu.max").read_text() == "200000 100000"
    assert (d / "cpu.weight").read_text() == "200"
    assert set(group.enforced) == {"memory", "pids", "cpu"}
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (d / "pids.events").write_text("max 5\n")
    assert group.oom_killed() and group.pids_limit_hit()
    group.kill()
    assert (d / "cgroup.kill").read_text() == "1"


def test_no_permission_is_a_clear_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        # root ignores directory modes: use a path that cannot be created instead
        monkeypatch.setattr(cgroups, "_open_v1", _raise_permission)
        monkeypatch.setattr(cgroups, "_open_v2", _raise_permission)
    with pytest.raises(SandboxUnavailableError) as err:
        cgroups.open_job_cgroup("job-x", JobLimits())
    assert err.value.rule == "E2"
    assert "CYXWIZ_CGROUP_PARENT" in (err.value.hint or "")


def _raise_permission(name: str, limits: JobLimits) -> cgroups.JobCgroup:
    raise PermissionError(13, "Permission denied", "/sys/fs/cgroup/memory/cyxwiz-" + name)
