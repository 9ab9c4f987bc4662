"""``python -m infra.serve``: the units' entry points open every setting, and refuse a missing or broken one
with a line naming it, no traceback (issue 21; SPEC D1, D2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.test_systemd_units import _env_file

PROJECT = Path(__file__).resolve().parents[2]


def _env(service: str, settings: dict[str, str], **changes: str | None) -> dict[str, str]:
    """The process environment for ``service``: its own and the shared settings, then ``changes``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYXWIZ_")}
    env["PYTHONPATH"] = str(PROJECT)
    for key, value in settings.items():
        owner, _, name = key.rpartition(":")
        if owner in ("", service):
            env[name] = value
    for key, change in changes.items():
        if change is None:
            env.pop(key, None)
        else:
            env[key] = change
    return env


def _check(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.serve", service, "--check"],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("service", ["coordinator", "gateway"])
def test_check_opens_every_setting(service: str, control_plane: dict[str, str]) -> None:
    proc = _check(service, _env(service, control_plane))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{service}: configuration ok (https://127.0.0.1:" in proc.stdout


@pytest.mark.parametrize(
    "service,missing",
    [
        ("coordinator", "CYXWIZ_TLS_CERT"),
        ("coordinator", "CYXWIZ_STORE_MASTER_KEY_FILE"),
        ("coordinator", "CYXWIZ_CONTROL_PLANE"),
        ("gateway", "CYXWIZ_KEYRING_DIR"),
        ("gateway", "CYXWIZ_CA_BUNDLE"),
    ],
)
def test_check_names_a_missing_setting(service: str, missing: str, control_plane: dict[str, str]) -> None:
    proc = _check(service, _env(service, control_plane, **{missing: None}))
    assert proc.returncode == 2
    assert missing in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_check_refuses_a_group_readable_master_key(control_plane: dict[str, str], tmp_path: Path) -> None:
    """D2: a store key that others could read is refused before the listener opens."""
    loose = tmp_path / "loose.key"
    loose.write_text(Path(control_plane["coordinator:CYXWIZ_STORE_MASTER_KEY_FILE"]).read_text())
    loose.chmod(0o640)
    proc = _check("coordinator", _env("coordinator", control_plane, CYXWIZ_STORE_MASTER_KEY_FILE=str(loose)))
    assert proc.returncode == 2
    assert "0640" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_shipped_settings_name_only_settings_the_services_know() -> None:
    """Each listener's shipped env file, with the shared one, sets only what infra.serve reads."""
    served = (PROJECT / "infra" / "serve.py").read_text(encoding="utf-8")
    for service in ("coordinator", "gateway"):
        for key in _env_file(PROJECT / "infra" / "config" / f"{service}.env"):
            assert f'"{key}"' in served, f"{service}.env sets {key}, which infra.serve never reads"
