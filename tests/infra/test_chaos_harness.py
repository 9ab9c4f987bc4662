"""The chaos harness's own rules (issue 21; F1, F2): a part that died on its own is seen as dead (also while
it is an unreaped zombie) and started again before the next cell, as systemd's ``Restart=always`` does,
with the cell's note naming it; a part that lives is left alone."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from infra.chaos import Service
from infra.chaos_table import Cell, Runner


class _Part:
    """A real child process the harness can lose: ``exit`` makes it end on its own (a zombie until reaped)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def reap(self) -> None:
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def service(self, name: str) -> Service:
        return Service(name=name, pid=self.pid, start=self.start, reap=self.reap)


def _zombie(part: _Part) -> None:
    assert part.proc is not None
    part.proc.kill()  # ends; not waited for: a zombie, as a part that exited and nobody reaped
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{part.proc.pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.05)
    raise AssertionError("the process did not end")


def test_a_living_part_is_alive_and_a_dead_one_is_not_even_unreaped() -> None:
    part = _Part()
    part.start()
    try:
        service = part.service("control")
        assert service.alive()  # positive control
        _zombie(part)
        assert not service.alive()
        part.reap()
        assert not service.alive()
        assert not Service(name="never", pid=lambda: None, start=lambda: None).alive()
    finally:
        part.stop()


def test_supervise_restarts_only_the_part_that_exited_and_says_so() -> None:
    dead, living = _Part(), _Part()
    dead.start()
    living.start()
    try:
        chaos: Any = type("Chaos", (), {"stack": None})()
        chaos.services = {"control": dead.service("control"), "gateway": living.service("gateway")}
        _zombie(dead)
        runner = Runner(chaos)
        cell = Cell(process="prefect", step="lock")
        runner.supervise(cell)
        assert dead.starts == 2 and chaos.services["control"].alive()
        assert living.starts == 1  # a living part is never restarted
        assert "control had exited on its own: restarted" in cell.note
        assert "gateway" not in cell.note
        again = Cell(process="prefect", step="lock")
        runner.supervise(again)
        assert again.note == "" and dead.starts == 2
    finally:
        dead.stop()
        living.stop()
