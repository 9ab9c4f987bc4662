"""How a sandboxed run ended, in one check order for every backend (SPEC E2: the reason is always stated).

A backend measures (exit status, what the watchdog killed for, the kernel's OOM flag, the pids counter)
and :func:`classify` names the outcome, first match wins:

1. the watchdog killed it for wall time                      -> ``timeout``
2. the watchdog killed it for output or log volume           -> ``output_limit``
3. the OOM killer ended it                                   -> ``oom``
4. SIGXFSZ (one file past RLIMIT_FSIZE)                      -> ``output_limit``
5. exit status 0                                             -> ``ok``
6. another signal                                            -> ``signal``
7. anything else                                             -> ``exit_nonzero``

Host measurements come before the exit status because a killed job's status says nothing about why it
was killed, and a job must not talk its way out of a limit by exiting 0 once the host decided.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from cyxwiz.sandbox.limits import JobLimits
from cyxwiz.sandbox.result import SandboxResult, Status
from cyxwiz.sandbox.supervise import LogTail, Verdict
from cyxwiz.sandbox.workdir import JobDir

SIGNAMES = {s.value: s.name for s in signal.Signals}


@dataclass(frozen=True, kw_only=True)
class Wording:
    """A backend's phrases for what it did (a process tree or a container was killed)."""

    timeout_kill: str
    output_kill: str
    oom: str
    file_size: str
    named_signals: bool


@dataclass(frozen=True, kw_only=True)
class Outcome:
    status: Status
    reason: str
    limits_hit: tuple[str, ...]
    signal: int | None


def classify(
    *,
    sig: int | None,
    rc: int,
    killed_for: str | None,
    oom: bool,
    limits: JobLimits,
    wording: Wording,
    pids_hit: bool = False,
) -> Outcome:
    """The outcome of a run, in the check order of the module docstring; ``sig`` is the signal the
    backend read from the exit status (None when it did not end by one)."""
    hit = ["pids"] if pids_hit else []
    status: Status
    if killed_for == "wall_time":
        status, reason = (
            "timeout",
            f"wall time limit {limits.wall_seconds:g} s exceeded; {wording.timeout_kill}",
        )
        hit.append("wall_time")
    elif killed_for in ("output_bytes", "log_bytes"):
        status = "output_limit"
        reason = f"{killed_for.replace('_', ' ')} limit exceeded; {wording.output_kill}"
        hit.append(killed_for)
    elif oom:
        status, reason = "oom", wording.oom
        hit.append("memory")
    elif sig == signal.SIGXFSZ:
        status, reason = "output_limit", wording.file_size
        hit.append("file_size")
    elif rc == 0:
        status, reason = "ok", "exited 0"
    elif sig is not None:
        label = SIGNAMES.get(sig, sig) if wording.named_signals else sig
        status, reason = "signal", f"killed by signal {label}"
    else:
        status, reason = "exit_nonzero", f"exited with status {rc}"
    if pids_hit and status != "ok":
        reason += " (pids limit was hit)"
    return Outcome(status=status, reason=reason, limits_hit=tuple(dict.fromkeys(hit)), signal=sig)


def sandbox_result(
    outcome: Outcome,
    *,
    rc: int,
    verdict: Verdict,
    job: JobDir,
    logs: tuple[LogTail, LogTail],
    backend: str,
    enforcement: dict[str, str],
    peak_memory_bytes: int | None = None,
) -> SandboxResult:
    """The result a backend returns: its outcome with what the host collected."""
    return SandboxResult(
        status=outcome.status,
        exit_code=rc,
        output_dir=job.output,
        messages=[],
        stdout_tail=logs[0].text(),
        stderr_tail=logs[1].text(),
        wall_seconds=verdict.wall_seconds,
        reason=outcome.reason,
        signal=outcome.signal,
        limits_hit=outcome.limits_hit,
        output_bytes=verdict.output_bytes,
        peak_memory_bytes=peak_memory_bytes,
        backend=backend,
        enforcement=enforcement,
    )
