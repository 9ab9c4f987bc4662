"""Two jobs on one host (SPEC E7), the non-root path, and a real PyTorch training run in the sandbox."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cyxwiz.sandbox import JobLimits, SandboxResult, run_sandboxed
from tests.sandbox.conftest import REPO, RunPy

pytestmark = pytest.mark.slow


# Job B looks for job A. The marker is spelled apart so that B's own command line does not match.
PEEK = """
import os, socket
marker = "cyxwiz-job-" + "a"
cmds = [open(f"/proc/{p}/cmdline", "rb").read() for p in os.listdir("/proc") if p.isdigit()]
print("procs", sum(1 for c in cmds if marker.encode() in c))
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\\0" + marker)
    print("abstract CONNECTED")
except OSError as e:
    print("abstract", e.errno)
"""

STATUS_PROBE = """
lines = open("/proc/self/status").read().splitlines()
s = dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
print(s["Uid"].split()[1], int(s["CapEff"], 16), s["Seccomp"].strip(), s["NoNewPrivs"].strip())
"""

NONROOT = """
import json, sys
from pathlib import Path
from cyxwiz.errors import SandboxUnavailableError
from cyxwiz.sandbox import JobLimits, SandboxPolicy, run_sandboxed
work, code = Path(sys.argv[1]), sys.argv[2]
argv = ["/usr/bin/python3", "-c", code]
try:
    run_sandboxed(argv=argv, workdir=work / "strict", limits=JobLimits())
    strict = "ran"
except SandboxUnavailableError as e:
    strict = e.code
degraded = SandboxPolicy(allow_degraded=True)
r = run_sandboxed(argv=argv, workdir=work / "degraded", limits=JobLimits(), policy=degraded)
print(json.dumps({"strict": strict, "status": r.status, "out": r.stdout_tail.strip(), "err": r.stderr_tail,
                  "memory": r.enforcement["memory"]}))
"""


def test_concurrent_jobs_cannot_see_each_other(run_any: RunPy, tmp_path: Path) -> None:
    results: dict[str, SandboxResult] = {}

    def job_a() -> None:
        results["a"] = run_any(
            "import socket, time\n"
            "s = socket.socket(socket.AF_UNIX); s.bind('\\0cyxwiz-job-a'); s.listen(1)\n"
            "open('/output/a-secret', 'w').write('weights of A')\n"
            "time.sleep(4)\n"
        )

    t = threading.Thread(target=job_a)
    t.start()
    try:
        time.sleep(1.5)  # let A start
        jobs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("job"))
        a_root = jobs[0]
        a_paths = [str(a_root / "bridge" / "bridge.sock"), str(a_root / "output" / "a-secret")]
        r = run_any(PEEK + f"for p in {a_paths!r}:\n    print('path', os.path.exists(p))\n")
    finally:
        t.join()
    assert results["a"].status == "ok"
    out = r.stdout_tail.split("\n")
    assert "procs 0" in out  # A's processes are not in B's pid namespace
    assert "abstract 111" in out  # ECONNREFUSED: A's abstract socket lives in another net namespace
    assert out.count("path False") == 2  # A's work dir and bridge socket do not exist for B


def _not_traversable_by_others(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that a user outside its group cannot enter, if any."""
    for part in [path, *path.parents]:
        if not os.stat(part).st_mode & 0o001:
            return part
    return None


def _stage_package_for_others(work: Path) -> Path:
    """A copy of the ``cyxwiz`` package under ``work`` (owned by the unprivileged user), read-only for it."""
    lib = work / "lib"
    shutil.copytree(REPO / "cyxwiz", lib / "cyxwiz", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for root, _dirs, files in os.walk(lib):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return lib


def test_non_root_operator_user_namespace_mode(tmp_path: Path, bwrap_usable: None) -> None:
    """Run the sandbox as an unprivileged host user (uid 65534): user-namespace mode, no cgroup
    delegation -> refused by default, runs with allow_degraded and says what is not enforced."""
    system_python = shutil.which("python3", path="/usr/bin")
    if os.geteuid() != 0 or system_python is None:
        pytest.skip("needs root (to become an unprivileged user) and /usr/bin/python3")
    work = Path(tempfile.mkdtemp(prefix="cyxwiz-nonroot-"))
    blocked = _not_traversable_by_others(work.parent)
    if blocked is not None:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(
            f"uid 65534 cannot reach the temp dir: {blocked} is not searchable by others (set TMPDIR)"
        )
    os.chown(work, 65534, 65534)
    try:
        # The checkout may sit in a directory other users cannot read (a 0700 home, `mktemp -d`): the
        # unprivileged user gets its own readable copy of the package instead of the checkout's path.
        lib = _stage_package_for_others(work)
        proc = subprocess.run(
            [system_python, "-c", NONROOT, str(work), STATUS_PROBE],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib)},
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert report["strict"] == "sandbox-unavailable"
    assert report["status"] == "ok", report["err"]
    assert report["out"] == "65534 0 2 1"  # uid 65534 (mapped), no caps, seccomp filter, no-new-privs
    assert report["memory"].startswith("NOT enforced")


TRAIN = """
import hashlib, io
import torch
from sklearn.datasets import load_digits
from cyxwiz.sandbox.bridge_client import BridgeClient

torch.manual_seed(0)
bridge = BridgeClient.from_env()
bridge.hello("job-train")
x, y = load_digits(return_X_y=True)
x = torch.tensor(x, dtype=torch.float32) / 16.0
y = torch.tensor(y)
model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.5)
steps = 60
for step in range(1, steps + 1):
    idx = torch.randint(0, len(x), (64,))
    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 20 == 0:
        bridge.progress(step, steps)
        bridge.metrics(step, {"loss": float(loss)})
acc = float((model(x).argmax(1) == y).float().mean())
buf = io.BytesIO(); torch.save(model.state_dict(), buf)
open("/output/model.pt", "wb").write(buf.getvalue())
weights = hashlib.sha256(buf.getvalue()).hexdigest()
bridge.checkpoint(steps, weights, hashlib.sha256(b"idx").hexdigest(), "model.pt")
bridge.metrics(steps, {"accuracy": acc})
bridge.close()
print("accuracy", acc)
"""


@pytest.mark.parametrize("backend_name", ["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)])
def test_pytorch_training_runs_and_outputs_come_back(
    tmp_path: Path, backend_name: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("bwrap_usable" if backend_name == "bubblewrap" else "dockerd")
    r = run_sandboxed(
        argv=["python", "-c", TRAIN],
        workdir=tmp_path / "job",
        limits=JobLimits(memory_bytes=4 * 1024**3, cpu_cores=2, wall_seconds=300),
        backend=backend_name,
    )
    assert r.status == "ok", r.stderr_tail[-2000:]
    assert (r.output_dir / "model.pt").stat().st_size > 1000
    kinds = [m["kind"] for m in r.messages]
    assert kinds[0] == "hello" and "checkpoint" in kinds and kinds.count("progress") == 3
    acc = next(
        m["values"]["accuracy"] for m in r.messages if m["kind"] == "metrics" and "accuracy" in m["values"]
    )
    assert acc > 0.8
    assert r.bridge_errors == []
