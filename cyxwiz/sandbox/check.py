"""``sandbox check``: which backends work on this host and which protections are *really* active.

Static facts (kernel knobs, cgroup version and controllers, runtimes) plus a live probe: a tiny job
runs in each usable backend and reports its own ``/proc/self/status`` (uid, capabilities, seccomp mode,
no-new-privs) and whether it can open an IP socket.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyxwiz.errors import CyxwizError
from cyxwiz.sandbox.cgroups import detect as detect_cgroups
from cyxwiz.sandbox.limits import GiB, JobLimits

BACKEND_ENV = "CYXWIZ_SANDBOX_BACKEND"

_PROBE = (
    "import socket\n"
    "s = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
    "print('uid', s['Uid'].split()[1])\n"
    "print('cap_eff', s['CapEff'].strip())\n"
    "print('cap_bnd', s['CapBnd'].strip())\n"
    "print('seccomp', s.get('Seccomp', '?').strip())\n"
    "print('no_new_privs', s.get('NoNewPrivs', '?').strip())\n"
    "try:\n"
    "    socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(('127.0.0.1', 9))\n"
    "    print('ip_socket open')\n"
    "except OSError as e:\n"
    "    print('ip_socket', type(e).__name__)\n"
)


@dataclass
class BackendReport:
    name: str
    usable: bool
    detail: str
    live: dict[str, str] = field(default_factory=dict)


@dataclass
class HostReport:
    configured: str
    facts: dict[str, str]
    backends: list[BackendReport]

    @property
    def configured_usable(self) -> bool:
        return any(b.name == self.configured and b.usable for b in self.backends)

    def to_dict(self) -> dict[str, Any]:
        return {
            "configured_backend": self.configured,
            "configured_usable": self.configured_usable,
            "host": self.facts,
            "backends": [b.__dict__ for b in self.backends],
        }


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def host_facts() -> dict[str, str]:
    cg = detect_cgroups()
    userns = _read("/proc/sys/user/max_user_namespaces")
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    status = _read("/proc/self/status") or ""
    return {
        "running_as": "root" if os.geteuid() == 0 else f"uid {os.geteuid()}",
        "user_namespaces": (
            f"max {userns}" + ("" if clone in (None, "1") else ", unprivileged clone disabled")
            if userns
            else "unknown"
        ),
        "seccomp": "supported" if "Seccomp:" in status else "not reported by kernel",
        "no_new_privs": "supported" if "NoNewPrivs:" in status else "not reported by kernel",
        "cgroup": f"v{cg.version} ({', '.join(cg.controllers) or 'no controllers'}); "
        + ("job cgroups can be created" if cg.writable else "NOT writable: limits degrade")
        + f"; {cg.detail}",
        "bwrap": shutil.which("bwrap") or "missing",
        "setpriv": shutil.which("setpriv") or "missing",
        "runsc": shutil.which("runsc") or "missing",
    }


def _live(name: str) -> dict[str, str]:
    from cyxwiz.sandbox.api import run_sandboxed

    with tempfile.TemporaryDirectory(prefix="cyxwiz-check-") as tmp:
        try:
            r = run_sandboxed(
                argv=["python", "-c", _PROBE],
                workdir=Path(tmp) / "job",
                limits=JobLimits(wall_seconds=60, memory_bytes=1 * GiB, output_bytes=1024 * 1024),
                backend=name,
            )
        except CyxwizError as exc:
            return {"error": str(exc)}
        out = dict(line.split(" ", 1) for line in r.stdout_tail.splitlines() if " " in line)
        out["status"] = r.status
        for key, how in r.enforcement.items():
            out[f"enforced.{key}"] = how
        return out


def check_host(*, configured: str | None = None, live: bool = True) -> HostReport:
    from cyxwiz.sandbox.api import BACKENDS, get_backend

    configured = configured or os.environ.get(BACKEND_ENV, "bubblewrap")
    reports = []
    for name in BACKENDS:
        ok, detail = get_backend(name).probe()
        report = BackendReport(name, ok, detail)
        if ok and live:
            report.live = _live(name)
            if report.live.get("status") != "ok":
                report.usable = False
                report.detail += f"; live probe failed: {report.live.get('error', report.live.get('status'))}"
        reports.append(report)
    return HostReport(configured=configured, facts=host_facts(), backends=reports)
