"""The root CLI: help, version, and the one-line refusal contract."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from cyxwiz import __version__
from cyxwiz._cli import EXIT_ERROR, EXIT_INTERNAL, new_app
from cyxwiz.cli import app
from cyxwiz.errors import ValidationError

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_help_lists_demo() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output


def _failing_app(exc: Exception) -> typer.Typer:
    probe = new_app(help="probe")

    @probe.command()
    def boom() -> None:
        raise exc

    @probe.command()
    def other() -> None:
        pass

    return probe


def test_library_error_is_one_line_no_traceback() -> None:
    probe = _failing_app(ValidationError("must be positive", field="payment", rule="F3"))
    result = runner.invoke(probe, ["boom"])
    assert result.exit_code == EXIT_ERROR
    assert result.output.strip() == "error: payment: must be positive [rule F3]"
    assert "Traceback" not in result.output


def test_unexpected_error_is_one_line(monkeypatch: object) -> None:
    probe = _failing_app(RuntimeError("kaput"))
    result = runner.invoke(probe, ["boom"])
    assert result.exit_code == EXIT_INTERNAL
    assert "internal error (RuntimeError): kaput" in result.output
    assert "Traceback" not in result.output


def test_console_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cyxwiz.cli", "version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __version__
