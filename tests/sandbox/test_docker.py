"""Docker backend (SPEC E3): the hardened container config, the local image build, real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cyxwiz.sandbox import JobLimits, run_sandboxed
from cyxwiz.sandbox.docker_backend import GVISOR_PIDS_HEADROOM, DockerBackend, build_image
from cyxwiz.sandbox.limits import GiB, MiB
from cyxwiz.sandbox.policy import SandboxPolicy
from cyxwiz.sandbox.workdir import JobDir

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, **kw: object) -> dict[str, object]:
    job = JobDir.create(tmp_path / "j", uid=65534, gid=65534)
    limits = JobLimits(memory_bytes=2 * GiB, cpu_cores=1, pids=64, output_bytes=10 * MiB, **kw)  # type: ignore[arg-type]
    return DockerBackend().container_config(
        argv=["python", "-c", "pass"], job=job, limits=limits, env={"A": "1"}
    )


def test_container_config_is_hardened(tmp_path: Path) -> None:
    c = _config(tmp_path)
    assert c["network_mode"] == "none"
    assert c["read_only"] is True
    assert c["cap_drop"] == ["ALL"]
    assert c["privileged"] is False
    assert c["user"] == "65534:65534"
    opts = c["security_opt"]
    assert isinstance(opts, list)
    assert "no-new-privileges:true" in opts
    seccomp_opt = next(o for o in opts if o.startswith("seccomp="))
    assert "ptrace" in json.loads(seccomp_opt.removeprefix("seccomp="))["syscalls"][0]["names"]
    assert c["mem_limit"] == c["memswap_limit"] == 2 * GiB
    assert c["pids_limit"] == 64
    assert c["nano_cpus"] == 1_000_000_000
    assert "mode=1777" in c["tmpfs"]["/tmp"]  # type: ignore[index]
    assert c["command"] == ["python", "-c", "pass"]  # a list: never a shell string (E6)
    vols = c["volumes"]
    assert isinstance(vols, dict)
    assert vols[str(tmp_path / "j" / "output")] == {"bind": "/output", "mode": "rw"}
    assert all(v["mode"] == "ro" for k, v in vols.items() if v["bind"] != "/output")
    assert "device_requests" not in c
    assert c["runtime"] == "runc"


def test_gpu_request_only_when_asked(tmp_path: Path) -> None:
    c = _config(tmp_path, gpus=1)
    assert c["device_requests"][0]["Count"] == 1  # type: ignore[index]


def test_gvisor_runtime_and_pids_headroom(tmp_path: Path) -> None:
    job = JobDir.create(tmp_path / "j", uid=65534, gid=65534)
    c = DockerBackend(policy=SandboxPolicy(runtime="runsc")).container_config(
        argv=["true"], job=job, limits=JobLimits(pids=64), env={}
    )
    assert c["runtime"] == "runsc"
    assert c["pids_limit"] == 64 + GVISOR_PIDS_HEADROOM


def test_dockerfile_pulls_nothing() -> None:
    text = (REPO / "infra" / "sandbox" / "Dockerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.upper().startswith("FROM ")]
    assert froms == ["scratch"]


@pytest.mark.docker
@pytest.mark.slow
def test_image_builds_locally(dockerd: None) -> None:
    assert build_image(tag="cyxwiz-sandbox:latest").startswith("sha256:")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["docker", "gvisor"])
def test_run_reports_messages_and_output(tmp_path: Path, dockerd: None, backend_name: str) -> None:
    ok, why = DockerBackend(
        policy=SandboxPolicy(runtime="runsc" if backend_name == "gvisor" else "runc")
    ).probe()
    if not ok:
        pytest.skip(why)
    r = run_sandboxed(
        argv=[
            "python",
            "-c",
            "import os\n"
            "from cyxwiz.sandbox.bridge_client import BridgeClient\n"
            "c = BridgeClient.from_env(); c.hello('job-1'); c.progress(1, 1); c.close()\n"
            "open('/output/out.txt', 'w').write(str(os.getuid()))\n",
        ],
        workdir=tmp_path / "j",
        limits=JobLimits(wall_seconds=60),
        backend=backend_name,
    )
    assert r.status == "ok", r.stderr_tail
    assert (r.output_dir / "out.txt").read_text() == "65534"
    assert [m["kind"] for m in r.messages] == ["hello", "progress"]
    assert r.backend == backend_name
