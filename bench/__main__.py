"""Run every benchmark module in ``bench/`` and print its ratios.

Each ``bench/bench_*.py`` exposes ``run() -> list[tuple[str, float, str]]`` (name, ratio, explanation).
Results go to stdout; ``bench/RESULTS.md`` records the numbers measured on the reference machine.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main(argv: list[str]) -> int:
    wanted = set(argv)
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    for name in names:
        if wanted and name not in wanted and name.removeprefix("bench_") not in wanted:
            continue
        module = importlib.import_module(f"bench.{name}")
        started = time.perf_counter()
        for label, ratio, why in module.run():
            print(f"{name:<24} {label:<40} {ratio:>10.3f}  {why}")
        print(f"{name:<24} (took {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
