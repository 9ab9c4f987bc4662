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
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from cyxwiz.errors import SandboxError, SandboxUnavailableError
from cyxwiz.sandbox import bwrap_args
from cyxwiz.sandbox.bwrap_args import bwrap_path
from cyxwiz.sandbox.cgroups import JobCgroup, open_job_cgroup
from cyxwiz.sandbox.limits import JobLimits, MiB
from cyxwiz.sandbox.outcome import SIGNAMES, Wording, classify, sandbox_result
from cyxwiz.sandbox.policy import SandboxPolicy
from cyxwiz.sandbox.result import SandboxResult
from cyxwiz.sandbox.supervise import LogTail, Verdict, supervise
from cyxwiz.sandbox.workdir import JobDir

__all__ = ["BubblewrapBackend", "bwrap_path"]

_PROBED: dict[tuple[str, int], str] = {}
_CHILD_PID_RE = re.compile(rb'"child-pid"\s*:\s*(\d+)')
_WORDING = Wording(
    timeout_kill="whole process tree killed",
    output_kill="job killed, output not trusted",
    oom="memory limit exceeded: killed by the kernel OOM killer (cgroup)",
    file_size="file size limit (RLIMIT_FSIZE) exceeded",
    named_signals=True,
)


def _close_all(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


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
        fds, info_r, block_w = bwrap_args.setup_fds(self.policy)
        info_w, block_r = fds["info"], fds["block"]
        cmd = bwrap_args.command(self.policy, argv=argv, job=job, limits=limits, env=env, fds=fds)
        enforcement.update(bwrap_args.static_enforcement(self.policy))
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
            _close_all(info_w, block_r, fds["seccomp"], fds["passwd"], fds["group"])
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
            _close_all(block_w, info_r)

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
        sig: int | None = rc - 128 if rc > 128 and (rc - 128) in SIGNAMES else None
        if rc < 0:
            sig = -rc
        outcome = classify(
            sig=sig,
            rc=rc,
            killed_for=verdict.killed_for,
            oom=cgroup.oom_killed() if cgroup is not None else False,
            pids_hit=cgroup is not None and cgroup.pids_limit_hit(),
            limits=limits,
            wording=_WORDING,
        )
        return sandbox_result(
            outcome,
            rc=rc,
            verdict=verdict,
            job=job,
            logs=logs,
            backend=self.name,
            enforcement=enforcement,
            peak_memory_bytes=cgroup.peak_memory() if cgroup is not None else None,
        )
