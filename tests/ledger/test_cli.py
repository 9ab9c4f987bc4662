"""``cyxwiz escrow`` and ``cyxwiz ledger``: commands, JSON output, one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyxwiz.cli import app
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.config import open_ledger
from cyxwiz.ledger.embedded import DemoLedger, LocalLedgerHandle, provision_demo
from cyxwiz.ledger.keystore import KdfParams

PASSPHRASE = "cli-test-passphrase"


@pytest.fixture
def demo(ledger_service: LocalLedgerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DemoLedger:
    monkeypatch.setenv("CYXWIZ_LEDGER_PASSPHRASE", PASSPHRASE)
    demo = provision_demo(
        rpc_url=ledger_service.rpc_url,
        state_dir=tmp_path / "demo",
        passphrase=PASSPHRASE.encode(),
        user_funds=50_000_000,
        kdf=KdfParams.fast_for_tests(),
    )
    monkeypatch.setenv("CYXWIZ_LEDGER_CONFIG", str(demo.config_path))
    return demo


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_status_list_dispute_and_admin_resolution(demo: DemoLedger) -> None:
    ledger = open_ledger(demo.config)
    ledger.create(job_id="job-cli", user=demo.user, amount=2_000_000)
    ledger.assign(job_id="job-cli", node_wallet=demo.node.pubkey())

    code, out, _ = _run("escrow", "status", "job-cli", "--json")
    assert code == 0 and json.loads(out)["state"] == "locked"
    code, out, _ = _run("escrow", "dispute", "job-cli", "--reason", "metrics look fabricated")
    assert code == 0 and "disputed" in out
    code, out, _ = _run("escrow", "list", "--state", "disputed", "--json")
    assert [r["job_id"] for r in json.loads(out)] == ["job-cli"]
    code, out, _ = _run("escrow", "resolve-dispute", "job-cli", "--to", "refund", "--json")
    assert code == 0, out
    record = json.loads(out)
    assert (record["state"], record["resolution"]) == ("refunded", "refund")
    assert (
        ledger.chain.token_amount(txbuild.token_account_of(demo.user.pubkey(), ledger.mint))
        == demo.user_funds
    )
    code, out, _ = _run("escrow", "reconcile")
    assert code == 0 and "no escrows" in out


def test_refusals_are_one_line(demo: DemoLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = _run("escrow", "status", "job-none")
    assert code == 4 and err.strip().startswith("error:") and "no escrow" in err and "Traceback" not in err
    code, _, err = _run("escrow", "resolve-dispute", "job-none", "--to", "steal")
    assert code == 2 and "must be 'release' or 'refund'" in err
    code, _, err = _run("escrow", "list", "--state", "bogus")
    assert code == 2 and "unknown state" in err
    monkeypatch.setenv("CYXWIZ_LEDGER_PASSPHRASE", "wrong")
    code, _, err = _run("escrow", "reconcile")
    assert code == 2 and "cannot decrypt key file" in err and len(err.strip().splitlines()) == 1


def test_ledger_serve_refuses_corrupt_snapshot_and_non_loopback(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "ledger-snapshot.json").write_text(
        '{"body": {"format": "cyxwiz-ledger-snapshot"}, "sha256": "00"}'
    )
    cmd = [
        sys.executable,
        "-m",
        "cyxwiz.ledger.service_cli",
        "serve",
        "--state-dir",
        str(state),
        "--port",
        "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "ledger snapshot is corrupt" in proc.stderr
    proc = subprocess.run(
        [*cmd, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2 and "loopback only" in proc.stderr
