"""Docker/Podman backend (SPEC E3, production), through the ``docker`` SDK — never a shell string (E6).

Every container gets: ``--network none``, ``--read-only`` root, tmpfs /tmp (1777, sized), ``--cap-drop
ALL``, ``no-new-privileges``, the seccomp profile of :mod:`cyxwiz.sandbox.seccomp`, uid/gid 65534,
``--memory`` (= memory+swap), ``--cpus``, ``--pids-limit``, fsize/core ulimits, GPU device requests only
when the job asks for GPUs, and the OCI runtime of the policy (``runsc`` = gVisor for hostile code).
The image is built locally from ``infra/sandbox`` (``FROM scratch``; no registry pulls). The runtime
(interpreter, venv, ``cyxwiz``) is bind-mounted read-only, like the bubblewrap backend does.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cyxwiz.errors import SandboxError, SandboxUnavailableError
from cyxwiz.sandbox import seccomp
from cyxwiz.sandbox.limits import JobLimits, MiB
from cyxwiz.sandbox.outcome import Wording, classify, sandbox_result
from cyxwiz.sandbox.policy import BRIDGE_DIR, INPUT_DIR, OUTPUT_DIR, SandboxPolicy
from cyxwiz.sandbox.result import SandboxResult
from cyxwiz.sandbox.supervise import LogTail, supervise
from cyxwiz.sandbox.workdir import JobDir

_WORDING = Wording(
    timeout_kill="container killed",
    output_kill="output not trusted",
    oom="memory limit exceeded: container OOM-killed",
    file_size="file size limit exceeded",
    named_signals=False,
)

#: The build context of the sandbox image (repo checkout); override with CYXWIZ_SANDBOX_CONTEXT.
DEFAULT_CONTEXT = Path(__file__).resolve().parents[2] / "infra" / "sandbox"
_DOCKER_TIMEOUT = 60
#: gVisor's Sentry and gofer run in the container's cgroup: its pids limit must leave room for their
#: threads or the sandbox cannot even start (measured: pids 40 fails at StartRoot).
GVISOR_PIDS_HEADROOM = 256


def _client() -> Any:
    import docker

    return docker.from_env(timeout=_DOCKER_TIMEOUT)


def build_image(*, tag: str, context: Path | None = None) -> str:
    """Build the sandbox image from ``infra/sandbox`` (no pulls: the Dockerfile is ``FROM scratch``)."""
    ctx = Path(os.environ.get("CYXWIZ_SANDBOX_CONTEXT", context or DEFAULT_CONTEXT))
    if not (ctx / "Dockerfile").is_file():
        raise SandboxUnavailableError(f"no sandbox image build context at {ctx}", rule="E3")
    image, _logs = _client().images.build(path=str(ctx), tag=tag, pull=False, rm=True, forcerm=True)
    return str(image.id)


class DockerBackend:
    name = "docker"

    def __init__(self, *, policy: SandboxPolicy | None = None) -> None:
        self.policy = policy or SandboxPolicy()
        if self.policy.runtime == "runsc":
            self.name = "gvisor"

    def probe(self) -> tuple[bool, str]:
        try:
            client = _client()
            info = client.info()
        except Exception as exc:  # the SDK raises several unrelated types when no daemon answers
            return False, f"no Docker daemon reachable: {type(exc).__name__}: {exc}"
        runtimes = set(info.get("Runtimes", {}))
        if self.policy.runtime not in runtimes:
            return (
                False,
                f"runtime {self.policy.runtime!r} not configured in dockerd ({', '.join(sorted(runtimes))})",
            )
        return True, f"dockerd {info.get('ServerVersion')}, runtime {self.policy.runtime}"

    def ensure_image(self) -> None:
        import docker.errors

        try:
            _client().images.get(self.policy.image)
        except docker.errors.ImageNotFound:
            build_image(tag=self.policy.image)

    def container_config(
        self, *, argv: Sequence[str], job: JobDir, limits: JobLimits, env: Mapping[str, str]
    ) -> dict[str, Any]:
        """The exact ``containers.create`` keyword arguments (inspectable by tests and ``sandbox check``)."""
        from docker.types import DeviceRequest, Ulimit

        p = self.policy
        volumes: dict[str, dict[str, str]] = {}
        for path in (*p.ro_paths, *p.extra_ro_paths):
            if path.exists():
                volumes[str(path)] = {"bind": str(path), "mode": "ro"}
        volumes[str(job.output)] = {"bind": OUTPUT_DIR, "mode": "rw"}
        volumes[str(job.bridge_dir)] = {"bind": BRIDGE_DIR, "mode": "ro"}
        if job.inputs is not None:
            volumes[str(job.inputs)] = {"bind": INPUT_DIR, "mode": "ro"}
        fsize = max(limits.output_bytes + 1, 1 * MiB)
        tmp_size = min(limits.disk_bytes, limits.memory_bytes)
        config: dict[str, Any] = {
            "image": p.image,
            "command": list(argv),
            "user": f"{p.uid}:{p.gid}",
            "group_add": [],
            "environment": dict(env),
            # cwd "/" (read-only) as in bubblewrap; a working_dir of /tmp would make dockerd copy the
            # image's dir mode onto the tmpfs and lose its 1777.
            "working_dir": "/",
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={tmp_size},mode=1777"},  # noqa: S108
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true", f"seccomp={json.dumps(seccomp.docker_profile())}"],
            "privileged": False,
            "mem_limit": limits.memory_bytes,
            "memswap_limit": limits.memory_bytes,  # no swap beyond the memory limit
            # dockerd refuses more CPUs than the host has; the host's count is the same limit then.
            "nano_cpus": int(min(limits.cpu_cores, os.cpu_count() or 1) * 1e9),
            "pids_limit": limits.pids + (GVISOR_PIDS_HEADROOM if p.runtime == "runsc" else 0),
            "ulimits": [Ulimit(name="fsize", soft=fsize, hard=fsize), Ulimit(name="core", soft=0, hard=0)],
            "volumes": volumes,
            "runtime": p.runtime,
            "ipc_mode": "private",
            "hostname": "sandbox",
            "labels": {"org.cyxwiz.job": job.name},
            "detach": True,
        }
        if limits.gpus > 0:
            config["device_requests"] = [DeviceRequest(count=limits.gpus, capabilities=[["gpu"]])]
        return config

    def run(
        self,
        *,
        argv: Sequence[str],
        job: JobDir,
        limits: JobLimits,
        env: Mapping[str, str],
        bridge: object | None = None,
    ) -> SandboxResult:
        import docker.errors

        self.ensure_image()
        client = _client()
        config = self.container_config(argv=argv, job=job, limits=limits, env=env)
        started = time.monotonic()
        try:
            container = client.containers.create(**config)
        except docker.errors.APIError as exc:
            raise SandboxError(f"docker refused the container: {exc.explanation or exc}", rule="E3") from None
        logs = (LogTail(), LogTail())
        finished = threading.Event()
        exit_info: dict[str, Any] = {}
        try:
            stream = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
            container.start()

            def pump() -> None:
                with contextlib.suppress(Exception):
                    for out, err in stream:
                        if out:
                            logs[0].feed(out)
                        if err:
                            logs[1].feed(err)

            def waiter() -> None:
                try:
                    exit_info.update(container.wait())
                except Exception as exc:  # daemon gone: report below
                    exit_info["Error"] = str(exc)
                finally:
                    finished.set()

            pumper = threading.Thread(target=pump, daemon=True)
            pumper.start()
            threading.Thread(target=waiter, daemon=True).start()

            def kill() -> None:
                with contextlib.suppress(docker.errors.APIError):
                    container.kill()  # SIGKILL to the container's init: the whole tree goes with it

            verdict = supervise(
                wait=finished.wait, kill=kill, limits=limits, job=job, logs=logs, started=started
            )
            finished.wait(timeout=30)
            pumper.join(timeout=5)
            container.reload()
            state = container.attrs.get("State", {})
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        rc = int(exit_info.get("StatusCode", state.get("ExitCode", -1)))
        outcome = classify(
            sig=rc - 128 if rc > 128 else None,
            rc=rc,
            killed_for=verdict.killed_for,
            oom=bool(state.get("OOMKilled")),
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
            enforcement=self._enforcement(),
        )

    def _enforcement(self) -> dict[str, str]:
        return {
            "network": "none (--network none; seccomp allows AF_UNIX only)",
            "user": f"uid {self.policy.uid} gid {self.policy.gid}",
            "capabilities": "--cap-drop ALL",
            "no_new_privs": "--security-opt no-new-privileges",
            "seccomp": "cyxwiz profile (same deny list as bubblewrap)",
            "filesystem": "--read-only root; writable /output and tmpfs /tmp only",
            "memory": "--memory (= --memory-swap)",
            "cpu": "--cpus",
            "pids": "--pids-limit"
            + (
                f" (+{GVISOR_PIDS_HEADROOM} for gVisor's own threads)"
                if self.policy.runtime == "runsc"
                else ""
            ),
            "file_size": "ulimit fsize",
            "wall_time": "host watchdog, docker kill",
            "runtime": self.policy.runtime
            + (" (gVisor: syscalls served by a user-space kernel)" if self.policy.runtime == "runsc" else ""),
        }
