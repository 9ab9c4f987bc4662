"""``cyxwiz sandbox check`` / ``run`` (the node operator's view of SPEC E1–E3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyxwiz.cli import app

runner = CliRunner()


def test_check_json_reports_protections(bwrap_usable: None) -> None:
    result = runner.invoke(app, ["sandbox", "check", "--json", "--backend", "bubblewrap"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["configured_usable"] is True
    host = report["host"]
    for key in ("user_namespaces", "seccomp", "no_new_privs", "cgroup"):
        assert key in host
    bwrap = next(b for b in report["backends"] if b["name"] == "bubblewrap")
    live = bwrap["live"]
    assert live["uid"] == "65534"
    assert int(live["cap_eff"], 16) == 0
    assert live["seccomp"] == "2"
    assert live["no_new_privs"] == "1"
    assert live["ip_socket"] == "PermissionError"


def test_check_fails_for_unusable_configured_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = runner.invoke(app, ["sandbox", "check", "--no-live", "--backend", "docker"])
    assert result.exit_code == 1
    assert "configured backend docker is not usable" in result.output


def test_run_prints_result(tmp_path: Path, bwrap_usable: None) -> None:
    args = [
        "sandbox",
        "run",
        "--memory",
        "256M",
        "--timeout",
        "30",
        "--output",
        str(tmp_path / "j"),
        "--json",
    ]
    result = runner.invoke(app, [*args, "--", "python", "-c", "open('/output/x', 'w').write('12345')"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "ok"
    assert summary["output_bytes"] == 5


def test_run_timeout_exits_1_with_reason(tmp_path: Path, bwrap_usable: None) -> None:
    result = runner.invoke(
        app, ["sandbox", "run", "--timeout", "0.5", "--output", str(tmp_path / "j"), "--", "sleep", "30"]
    )
    assert result.exit_code == 1
    assert "status:       timeout" in result.output
    assert "NOT trusted" in result.output


def test_run_bad_size_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sandbox", "run", "--memory", "lots", "--", "true"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --memory: not a size: 'lots' [rule E2]")
