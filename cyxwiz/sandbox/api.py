"""``run_sandboxed``: the one entry point other parts use to run untrusted code (SPEC E1–E7)."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cyxwiz.errors import SandboxUnavailableError, ValidationError
from cyxwiz.sandbox.bridge import BridgeServer
from cyxwiz.sandbox.limits import JobLimits
from cyxwiz.sandbox.policy import BRIDGE_SOCKET, INPUT_DIR, OUTPUT_DIR, SandboxBackend, SandboxPolicy
from cyxwiz.sandbox.result import SandboxResult
from cyxwiz.sandbox.workdir import JobDir

BACKENDS = ("bubblewrap", "docker", "gvisor")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Names the sandbox sets itself; a job spec cannot override them.
_RESERVED_ENV = frozenset(
    {"CYXWIZ_BRIDGE", "CYXWIZ_OUTPUT", "CYXWIZ_INPUT", "CYXWIZ_GPU_MEMORY_BYTES", "HOME"}
)


def get_backend(name: str, *, policy: SandboxPolicy | None = None) -> SandboxBackend:
    """``bubblewrap`` (embedded default), ``docker`` (runc) or ``gvisor`` (docker + runsc)."""
    policy = policy or SandboxPolicy()
    if name == "bubblewrap":
        from cyxwiz.sandbox.bubblewrap import BubblewrapBackend

        return BubblewrapBackend(policy=policy)
    if name in ("docker", "gvisor"):
        from cyxwiz.sandbox.docker_backend import DockerBackend

        if name == "gvisor":
            policy = dataclasses.replace(policy, runtime="runsc")
        return DockerBackend(policy=policy)
    raise ValidationError(
        f"unknown backend {name!r}; one of {', '.join(BACKENDS)}", field="backend", rule="E3"
    )


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str) or not argv:
        raise ValidationError(
            "argv must be a non-empty list of strings (never a shell string)", field="argv", rule="E6"
        )
    out = []
    for item in argv:
        if not isinstance(item, str) or "\x00" in item:
            raise ValidationError("every argv item must be a string without NUL", field="argv", rule="E6")
        out.append(item)
    if "=" in out[0] or out[0].startswith("-"):
        raise ValidationError("argv[0] must not contain '=' or start with '-'", field="argv", rule="E6")
    return out


def _package_root() -> Path:
    import cyxwiz

    return Path(cyxwiz.__file__).resolve().parent.parent


def sandbox_env(extra: Mapping[str, str] | None, *, limits: JobLimits, inputs: bool) -> dict[str, str]:
    """The job's whole environment: nothing leaks in from the host (no tokens, no cloud credentials)."""
    env = {
        "PATH": f"{Path(sys.prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        # $HOME does not exist and the root is read-only: nothing persists there. Caches go to /tmp.
        "HOME": "/home/sandbox",
        "XDG_CACHE_HOME": "/tmp/.cache",  # noqa: S108 (the sandbox's private tmpfs)
        "TORCH_HOME": "/tmp/.cache/torch",  # noqa: S108
        "MPLCONFIGDIR": "/tmp/.cache/matplotlib",  # noqa: S108
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        # The job imports the very ``cyxwiz`` the node runs (bound read-only by runtime_paths), not whatever
        # an editable install's finder points at outside the sandbox, where nothing is bound.
        "PYTHONPATH": str(_package_root()),
        "CYXWIZ_BRIDGE": BRIDGE_SOCKET,
        "CYXWIZ_OUTPUT": OUTPUT_DIR,
        "CYXWIZ_GPU_MEMORY_BYTES": str(limits.gpu_memory_bytes),
    }
    if inputs:
        env["CYXWIZ_INPUT"] = INPUT_DIR
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise ValidationError(f"bad environment variable name {key!r}", field="env", rule="E6")
        if key in _RESERVED_ENV:
            raise ValidationError(f"{key} is set by the sandbox", field="env", rule="E6")
        if not isinstance(value, str) or "\x00" in value or len(value) > 32 * 1024:
            raise ValidationError(f"bad value for {key}", field="env", rule="E6")
        env[key] = value
    return env


def run_sandboxed(
    *,
    argv: Sequence[str],
    workdir: Path,
    limits: JobLimits,
    backend: str = "bubblewrap",
    inputs: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    policy: SandboxPolicy | None = None,
) -> SandboxResult:
    """Run ``argv`` in a fresh sandbox and return how it ended.

    ``workdir`` must be new or empty; it becomes the job's 0700 work dir with ``output/`` (``/output``
    inside) and the bridge socket (``$CYXWIZ_BRIDGE`` inside). ``inputs`` is mounted read-only at
    ``/input``. Bridge messages arrive in ``on_message`` as they come and in ``result.messages``.
    Raises :class:`SandboxUnavailableError` when the backend cannot run here, ``ValidationError`` for
    bad arguments (before anything is created).
    """
    if not isinstance(limits, JobLimits):
        raise ValidationError("limits must be a JobLimits", field="limits", rule="E2")
    clean_argv = _check_argv(argv)
    job_env = sandbox_env(env, limits=limits, inputs=inputs is not None)
    impl = get_backend(backend, policy=policy)
    ok, why = impl.probe()
    if not ok:
        raise SandboxUnavailableError(
            f"backend {backend} is not usable here: {why}", field="backend", rule="E3"
        )
    pol = policy or SandboxPolicy()
    job = JobDir.create(Path(workdir), uid=pol.uid, gid=pol.gid, inputs=inputs)
    bridge = BridgeServer(
        socket_path=job.socket_path,
        output_dir=job.output,
        input_dir=job.inputs,
        owner=(pol.uid, pol.gid),
        on_message=on_message,
    ).start()
    try:
        result = impl.run(argv=clean_argv, job=job, limits=limits, env=job_env, bridge=bridge)
    finally:
        bridge.stop()
    return dataclasses.replace(result, messages=list(bridge.messages), bridge_errors=list(bridge.errors))
