"""Docker/Podman backend (SPEC E3): placeholder until the hardened container backend lands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cyxwiz.errors import SandboxUnavailableError
from cyxwiz.sandbox.limits import JobLimits
from cyxwiz.sandbox.policy import SandboxPolicy
from cyxwiz.sandbox.result import SandboxResult
from cyxwiz.sandbox.workdir import JobDir


class DockerBackend:
    name = "docker"

    def __init__(self, *, policy: SandboxPolicy | None = None) -> None:
        self.policy = policy or SandboxPolicy()

    def probe(self) -> tuple[bool, str]:
        return False, "docker backend not implemented yet"

    def run(
        self,
        *,
        argv: Sequence[str],
        job: JobDir,
        limits: JobLimits,
        env: Mapping[str, str],
        bridge: object | None = None,
    ) -> SandboxResult:
        raise SandboxUnavailableError("docker backend not implemented yet", rule="E3")
