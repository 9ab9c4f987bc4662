"""The bubblewrap backend (SPEC E1–E3, embedded default): namespaces + seccomp + cgroup + watchdog.

Two ways in, chosen by who runs the node:

* **root** (a node agent as a system service): bwrap runs privileged *without* a user namespace, so
  the mounts it makes can read root-only host paths (e.g. a pyenv under /root); inside, ``setpriv``
  drops to uid/gid 65534 with an empty bounding set, no ambient caps and no-new-privs before the job's
  first instruction. The job is a real unprivileged uid on the host, not a mapped root.
* **not root**: bwrap makes a user namespace with uid/gid 65534 mapped to the operator's uid,
  ``--disable-userns``, ``--cap-drop ALL``.

Either way: new pid/net/ipc/uts/cgroup namespaces, a tmpfs root remounted read-only, read-only binds of
the runtime, writable /output and tmpfs /tmp only, seccomp from :mod:`cyxwiz.sandbox.seccomp` through
``--seccomp FD``, and the process tree placed in the job's cgroup *before* it runs (bwrap waits on
``--block-fd`` until the host moved it and set its rlimits).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from cyxwiz.errors import SandboxError, SandboxUnavailableError
from cyxwiz.sandbox import seccomp
from cyxwiz.sandbox.cgroups import JobCgroup, open_job_cgroup
from cyxwiz.sandbox.limits import JobLimits, MiB
from cyxwiz.sandbox.policy import (
    BRIDGE_DIR,
    ETC_FILES,
    INPUT_DIR,
    OUTPUT_DIR,
    SandboxPolicy,
)
from cyxwiz.sandbox.result import SandboxResult, Status
from cyxwiz.sandbox.supervise import LogTail, Verdict, supervise
from cyxwiz.sandbox.workdir import JobDir

_PROBED: dict[tuple[str, int], str] = {}
_CHILD_PID_RE = re.compile(rb'"child-pid"\s*:\s*(\d+)')
_SIGNAMES = {s.value: s.name for s in signal.Signals}


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


class BubblewrapBackend:
    name = "bubblewrap"

    def __init__(self, *, policy: SandboxPolicy | None = None) -> None:
        self.policy = policy or SandboxPolicy()

    def probe(self) -> tuple[bool, str]:
        exe = bwrap_path()
        if exe is None:
            return False, "bwrap not installed (Debian package bubblewrap)"
        key = (exe, os.geteuid())
        if key in _PROBED:  # a working bwrap keeps working; only success is remembered
            return True, _PROBED[key]
        ok, detail = self._probe(exe)
        if ok:
            _PROBED[key] = detail
        return ok, detail

    def _probe(self, exe: str) -> tuple[bool, str]:
        args = [exe, "--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"]
        if os.geteuid() == 0:
            args = [exe, "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--", "/bin/true"]
        try:
            proc = subprocess.run(args, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bwrap failed to start: {exc}"
        if proc.returncode != 0:
            return False, f"bwrap cannot create namespaces: {proc.stderr.decode(errors='replace').strip()}"
        mode = "privileged (root, setpriv to 65534)" if os.geteuid() == 0 else "user namespace"
        return True, f"{exe}, {mode}"

    # --- command line ---------------------------------------------------------------------------------

    def _binds(self, job: JobDir, limits: JobLimits) -> list[str]:
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
        for path in (*self.policy.ro_paths, *self.policy.extra_ro_paths):
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

    def _argv(
        self,
        *,
        argv: Sequence[str],
        job: JobDir,
        limits: JobLimits,
        env: Mapping[str, str],
        fds: dict[str, int],
    ) -> list[str]:
        exe = bwrap_path()
        if exe is None:
            raise SandboxUnavailableError(
                "bwrap is not installed", hint="apt-get install bubblewrap", rule="E3"
            )
        p = self.policy
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
        args += self._binds(job, limits)
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

    # --- run ----------------------------------------------------------------------------------------

    def run(
        self,
        *,
        argv: Sequence[str],
        job: JobDir,
        limits: JobLimits,
        env: Mapping[str, str],
        bridge: object | None = None,
    ) -> SandboxResult:
        enforcement: dict[str, str] = {}
        cgroup: JobCgroup | None = None
        try:
            cgroup = open_job_cgroup(job.name, limits)
            enforcement.update(cgroup.enforced)
        except SandboxUnavailableError as exc:
            if not self.policy.allow_degraded:
                raise
            enforcement["memory"] = f"NOT enforced: {exc.message}"
            enforcement["pids"] = "RLIMIT_NPROC (per host uid, approximate)"
            enforcement["cpu"] = "NOT enforced"
        try:
            return self._run(
                argv=argv, job=job, limits=limits, env=env, cgroup=cgroup, enforcement=enforcement
            )
        finally:
            if cgroup is not None:
                cgroup.kill()
                cgroup.remove()

    def _run(
        self,
        *,
        argv: Sequence[str],
        job: JobDir,
        limits: JobLimits,
        env: Mapping[str, str],
        cgroup: JobCgroup | None,
        enforcement: dict[str, str],
    ) -> SandboxResult:
        fds, info_r, block_w = self._setup_fds()
        info_w, block_r = fds["info"], fds["block"]
        cmd = self._argv(argv=argv, job=job, limits=limits, env=env, fds=fds)
        enforcement.update(self._static_enforcement())
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=tuple(fds.values()),
                env={"PATH": "/usr/bin:/bin"},
                start_new_session=True,
            )
        finally:
            for fd in (info_w, block_r, fds["seccomp"], fds["passwd"], fds["group"]):
                with contextlib.suppress(OSError):
                    os.close(fd)
        logs = (LogTail(), LogTail())
        assert proc.stdout is not None and proc.stderr is not None
        drains = [logs[0].drain(proc.stdout), logs[1].drain(proc.stderr)]
        child_fd: int | None = None
        try:
            child_pid = self._wait_for_child(info_r, proc, logs)
            # A pidfd, taken while the child is blocked (so certainly alive and ours): signalling it
            # later can never hit an unrelated process that reused the pid.
            child_fd = os.pidfd_open(child_pid)
            self._confine(proc.pid, child_pid, cgroup, limits)
            os.write(block_w, b"1")
        except BaseException:
            proc.kill()
            proc.wait()
            if child_fd is not None:
                os.close(child_fd)
            raise
        finally:
            for fd in (block_w, info_r):
                with contextlib.suppress(OSError):
                    os.close(fd)

        def kill() -> None:
            if cgroup is not None:
                cgroup.kill()
            # Killing the namespace's pid 1 makes the kernel kill every process in it.
            if child_fd is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(child_fd, signal.SIGKILL)
            proc.kill()  # Popen knows whether it reaped bwrap already: no pid-reuse hazard

        # A thread blocked in waitpid wakes the watchdog the moment bwrap exits (Popen.wait(timeout)
        # would poll with sleeps of up to 50 ms, all of it start-to-exit overhead).
        exited = threading.Event()

        def reap() -> None:
            proc.wait()
            exited.set()

        threading.Thread(target=reap, name="sandbox-reap", daemon=True).start()
        verdict = supervise(
            wait=exited.wait,
            kill=kill,
            limits=limits,
            job=job,
            logs=logs,
            started=started,
        )
        proc.wait()
        if child_fd is not None:
            os.close(child_fd)
        for t in drains:
            t.join(timeout=5)
        return self._result(
            rc=proc.returncode,
            verdict=verdict,
            cgroup=cgroup,
            job=job,
            logs=logs,
            enforcement=enforcement,
            limits=limits,
        )

    def _setup_fds(self) -> tuple[dict[str, int], int, int]:
        """Pipes bwrap reads its setup from: seccomp BPF, passwd/group, info (child pid), block."""
        p = self.policy

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

    def _static_enforcement(self) -> dict[str, str]:
        p = self.policy
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

    def _wait_for_child(
        self, info_r: int, proc: subprocess.Popen[bytes], logs: tuple[LogTail, LogTail]
    ) -> int:
        buf = b""
        while True:
            match = _CHILD_PID_RE.search(buf)
            if match and buf.rstrip().endswith((b",", b"}")):
                return int(match.group(1))
            chunk = os.read(info_r, 4096)
            if not chunk:
                if match:
                    return int(match.group(1))
                proc.wait(timeout=10)
                time.sleep(0.05)
                raise SandboxError(
                    f"bubblewrap failed to start the sandbox: {logs[1].text().strip()}", rule="E3"
                )
            buf += chunk

    def _confine(self, bwrap_pid: int, child_pid: int, cgroup: JobCgroup | None, limits: JobLimits) -> None:
        """Before the job runs: cgroup membership and rlimits, inherited by everything it forks."""
        if cgroup is not None:
            cgroup.add(child_pid)
        # /output is capped as a whole by the watchdog; a single file past the cap fails at once.
        fsize = max(limits.output_bytes + 1, 1 * MiB)
        resource.prlimit(child_pid, resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.prlimit(child_pid, resource.RLIMIT_CORE, (0, 0))
        if cgroup is None:
            resource.prlimit(child_pid, resource.RLIMIT_NPROC, (limits.pids, limits.pids))
        del bwrap_pid  # bwrap's monitor stays outside: it is ours, and it must survive to report the exit

    def _result(
        self,
        *,
        rc: int,
        verdict: Verdict,
        cgroup: JobCgroup | None,
        job: JobDir,
        logs: tuple[LogTail, LogTail],
        enforcement: dict[str, str],
        limits: JobLimits,
    ) -> SandboxResult:
        hit: list[str] = []
        sig: int | None = rc - 128 if rc > 128 and (rc - 128) in _SIGNAMES else None
        if rc < 0:
            sig = -rc
        oom = cgroup.oom_killed() if cgroup is not None else False
        if cgroup is not None and cgroup.pids_limit_hit():
            hit.append("pids")
        status: Status
        if verdict.killed_for == "wall_time":
            status, reason = (
                "timeout",
                (f"wall time limit {limits.wall_seconds:g} s exceeded; whole process tree killed"),
            )
            hit.append("wall_time")
        elif verdict.killed_for in ("output_bytes", "log_bytes"):
            status = "output_limit"
            reason = f"{verdict.killed_for.replace('_', ' ')} limit exceeded; job killed, output not trusted"
            hit.append(verdict.killed_for)
        elif oom:
            status, reason = "oom", "memory limit exceeded: killed by the kernel OOM killer (cgroup)"
            hit.append("memory")
        elif sig == signal.SIGXFSZ:
            status, reason = "output_limit", "file size limit (RLIMIT_FSIZE) exceeded"
            hit.append("file_size")
        elif rc == 0:
            status, reason = "ok", "exited 0"
        elif sig is not None:
            status, reason = "signal", f"killed by signal {_SIGNAMES.get(sig, sig)}"
        else:
            status, reason = "exit_nonzero", f"exited with status {rc}"
        if "pids" in hit and status != "ok":
            reason += " (pids limit was hit)"
        return SandboxResult(
            status=status,
            exit_code=rc,
            output_dir=job.output,
            messages=[],
            stdout_tail=logs[0].text(),
            stderr_tail=logs[1].text(),
            wall_seconds=verdict.wall_seconds,
            reason=reason,
            signal=sig,
            limits_hit=tuple(dict.fromkeys(hit)),
            output_bytes=verdict.output_bytes,
            peak_memory_bytes=cgroup.peak_memory() if cgroup is not None else None,
            backend=self.name,
            enforcement=enforcement,
        )
