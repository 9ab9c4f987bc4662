"""``cyxwiz serve`` command group."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cyxwiz.cli import app


def test_openapi_document(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    result = CliRunner().invoke(app, ["serve", "openapi", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "/v1/jobs/{job_id}/token" in json.loads(out.read_text())["paths"]


def test_coordinator_needs_certificates() -> None:
    result = CliRunner().invoke(app, ["serve", "coordinator", "--dev", "--state-dir", "/tmp/x-cyxwiz-none"])
    assert result.exit_code == 2
    assert "error: cert: --cert, --key and --bundle" in result.output
