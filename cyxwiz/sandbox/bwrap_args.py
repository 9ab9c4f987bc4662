"""The bubblewrap command line (SPEC E1, E3): what the sandbox sees and how privileges are dropped.

Built from the policy and the job only, never from a shell string (E6). The file descriptors it names
(seccomp BPF, passwd/group, info, block) come from :func:`setup_fds`; :mod:`cyxwiz.sandbox.bubblewrap`
runs the result and supervises it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from cyxwiz.errors import SandboxError, SandboxUnavailableError
from cyxwiz.sandbox import seccomp
from cyxwiz.sandbox.limits import JobLimits
from cyxwiz.sandbox.policy import BRIDGE_DIR, ETC_FILES, INPUT_DIR, OUTPUT_DIR, SandboxPolicy
from cyxwiz.sandbox.workdir import JobDir


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def binds(policy: SandboxPolicy, job: JobDir, limits: JobLimits) -> list[str]:
    """The mount arguments: runtime read-only, /output writable, private /tmp, /dev and /proc."""
    args: list[str] = []
    made: set[str] = {"/"}

    def parents(dest: str) -> None:
        # bwrap creates missing parents 0700 (root-owned): make them 0755 so uid 65534 can traverse.
        parts = Path(dest).parent.parts
        for i in range(2, len(parts) + 1):
            p = str(Path(*parts[:i]))
            if p not in made:
                made.add(p)
                args.extend(["--perms", "0755", "--dir", p])

    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        link = Path("/") / top
        if link.is_symlink():
            args.extend(["--symlink", os.readlink(link), str(link)])
    # The private /tmp comes before the runtime binds: a checkout or venv under the host's /tmp (CI
    # clones often live there) must stay visible, bound read-only on top of the fresh tmpfs.
    tmp_size = min(limits.disk_bytes, limits.memory_bytes)
    args.extend(["--perms", "1777", "--size", str(tmp_size), "--tmpfs", "/tmp"])  # noqa: S108 (a private tmpfs)
    made.add("/tmp")  # noqa: S108
    for path in (*policy.ro_paths, *policy.extra_ro_paths):
        if path.exists():
            parents(str(path))
            args.extend(["--ro-bind", str(path), str(path)])
            made.add(str(path))
    args.extend(["--perms", "0755", "--dir", "/etc"])
    for name in ETC_FILES:
        args.extend(["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"])
    shm = "/dev/shm"  # noqa: S108 (a private tmpfs inside the sandbox)
    args.extend(["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", shm])
    args.extend(["--bind", str(job.output), OUTPUT_DIR])
    if job.inputs is not None:
        args.extend(["--ro-bind", str(job.inputs), INPUT_DIR])
    args.extend(["--perms", "0755", "--dir", "/run", "--ro-bind", str(job.bridge_dir), BRIDGE_DIR])
    if limits.gpus > 0:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args.extend(["--dev-bind-try", str(dev), str(dev)])
    return args


def command(
    policy: SandboxPolicy,
    *,
    argv: Sequence[str],
    job: JobDir,
    limits: JobLimits,
    env: Mapping[str, str],
    fds: dict[str, int],
) -> list[str]:
    """The whole bwrap command line for one job."""
    exe = bwrap_path()
    if exe is None:
        raise SandboxUnavailableError("bwrap is not installed", hint="apt-get install bubblewrap", rule="E3")
    p = policy
    args = [
        exe,
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    root = os.geteuid() == 0
    if not root:
        args += ["--unshare-user", "--uid", str(p.uid), "--gid", str(p.gid)]
        args += ["--disable-userns", "--assert-userns-disabled", "--cap-drop", "ALL"]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    args += binds(policy, job, limits)
    args += ["--ro-bind-data", str(fds["passwd"]), "/etc/passwd"]
    args += ["--ro-bind-data", str(fds["group"]), "/etc/group"]
    args += ["--remount-ro", "/", "--chdir", "/", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    args += [
        "--seccomp",
        str(fds["seccomp"]),
        "--info-fd",
        str(fds["info"]),
        "--block-fd",
        str(fds["block"]),
    ]
    args.append("--")
    if root:
        args += ["/usr/bin/setpriv", f"--reuid={p.uid}", f"--regid={p.gid}", "--clear-groups"]
        args += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    # The job's environment is applied only after privileges are gone (env runs as the job's uid):
    # an LD_PRELOAD from a job spec must never reach a root process, even inside the sandbox.
    # (GNU env stops option parsing at the first NAME=VALUE; argv[0] has neither '=' nor a leading '-'.)
    args += ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    return args


def setup_fds(policy: SandboxPolicy) -> tuple[dict[str, int], int, int]:
    """Pipes bwrap reads its setup from: seccomp BPF, passwd/group, info (child pid), block.

    Returns (the fds bwrap inherits, our read end of info, our write end of block)."""
    p = policy

    def data_fd(data: bytes) -> int:
        if len(data) > 60_000:  # written before bwrap starts: must fit the pipe buffer
            raise SandboxError("sandbox setup data larger than a pipe buffer")
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        return r

    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    fds = {
        "seccomp": data_fd(seccomp.build_bpf()),
        "passwd": data_fd(f"sandbox:x:{p.uid}:{p.gid}:sandbox:/tmp:/usr/sbin/nologin\n".encode()),
        "group": data_fd(f"sandbox:x:{p.gid}:\n".encode()),
        "info": info_w,
        "block": block_r,
    }
    return fds, info_r, block_w


def static_enforcement(policy: SandboxPolicy) -> dict[str, str]:
    """What the command line enforces on every run (the cgroup adds its own entries)."""
    p = policy
    return {
        "namespaces": "pid, net, ipc, uts, mount" + (", user" if os.geteuid() != 0 else ""),
        "network": "none (empty net namespace; seccomp allows AF_UNIX only)",
        "user": f"uid {p.uid} gid {p.gid}, no supplementary groups",
        "capabilities": "all dropped, empty bounding set",
        "no_new_privs": "on",
        "seccomp": f"BPF deny list ({len(seccomp.DENIED_SYSCALLS)} syscalls, socket AF_UNIX only)",
        "filesystem": "read-only root; writable /output and tmpfs /tmp only",
        "file_size": "RLIMIT_FSIZE",
        "wall_time": "host watchdog, kills the pid namespace and cgroup",
        "gpu_memory": "CYXWIZ_GPU_MEMORY_BYTES (allocator cap in the runtime, not kernel-enforced)",
    }
