"""Sandbox costs (issue 5): start-to-exit overhead per backend, and training speed inside vs outside.

(a) ``python -c pass`` through ``run_sandboxed`` vs the bare process, best of several runs, for every
backend usable here (goal for bubblewrap: at most +60 ms). (b) steps/s of the same small PyTorch model
inside bubblewrap divided by outside, measured in the same run by the script itself (goal >= 0.97).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cyxwiz.sandbox import JobLimits, get_backend, run_sandboxed

RUNS = 9

TRAIN = """
import time, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(256, 256), torch.randint(0, 10, (256,))
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(20):
    step()
n, start = 300, time.perf_counter()
for _ in range(n):
    step()
print(n / (time.perf_counter() - start))
"""


def _bare(code: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, out


def _sandboxed(code: str, backend: str, root: Path, i: int) -> tuple[float, str]:
    start = time.perf_counter()
    r = run_sandboxed(
        argv=["python", "-c", code], workdir=root / f"{backend}-{i}", limits=JobLimits(), backend=backend
    )
    elapsed = time.perf_counter() - start
    if not r.ok:
        raise RuntimeError(f"{backend}: {r.reason}: {r.stderr_tail[-500:]}")
    return elapsed, r.stdout_tail


def run() -> list[tuple[str, float, str]]:
    results: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="cyxwiz-bench-") as tmp:
        root = Path(tmp)
        _bare("pass")
        bare = min(_bare("pass")[0] for _ in range(RUNS))
        for backend in ("bubblewrap", "docker", "gvisor"):
            if not get_backend(backend).probe()[0]:
                continue
            _sandboxed("pass", backend, root, -1)  # warm-up (image build, page cache)
            times = [_sandboxed("pass", backend, root, i)[0] for i in range(RUNS)]
            med = min(times)  # best of RUNS: load from other users only adds time
            results.append(
                (
                    f"{backend} start-to-exit / bare",
                    med / bare,
                    f"python -c pass: {med * 1000:.0f} ms vs {bare * 1000:.0f} ms bare "
                    f"(+{(med - bare) * 1000:.0f} ms; goal for bubblewrap <= +60 ms)",
                )
            )
        # Interleaved pairs: the machine is shared, so drift hits both sides alike.
        outside: list[float] = []
        inside: list[float] = []
        for i in range(5):
            outside.append(float(_bare(TRAIN)[1]))
            inside.append(float(_sandboxed(TRAIN, "bubblewrap", root, 100 + i)[1]))
        # Best of each side: on a shared machine other load only ever slows a run down.
        ratio = max(inside) / max(outside)
        results.append(
            (
                "bubblewrap train steps/s in / out",
                ratio,
                f"MLP 256-512-10, batch 256, best of 5 interleaved: {max(inside):.0f} vs "
                f"{max(outside):.0f} steps/s (goal >= 0.97)",
            )
        )
    return results


if __name__ == "__main__":
    for label, ratio, why in run():
        print(f"{label:<40} {ratio:8.3f}  {why}")
