"""``cyxwiz escrow`` and ``cyxwiz ledger``: commands, JSON output, one-line refusals."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cyxwiz.cli import app
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.config import open_ledger
from cyxwiz.ledger.embedded import DemoLedger
from cyxwiz.ledger.verifier_service import VerifierProcess
from cyxwiz.pki.certs import write_certificate
from cyxwiz.pki.keys import write_private_key
from tests.ledger.conftest import NODE_KEY, NODE_PEER, Pki, backdate_unstake


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_status_list_dispute_and_admin_resolution(
    demo: DemoLedger, verifier: VerifierProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispute is signed by the control plane's key + the verifier service; the resolution by the
    arbiter's own key (its own passphrase) + the verifier service: three processes, three sealed keys."""
    ledger = open_ledger(demo.config)
    ledger.create(job_id="job-cli", user=demo.user, amount=2_000_000)
    ledger.assign(job_id="job-cli", node_wallet=demo.node.pubkey(), node_peer_id=NODE_PEER)

    code, out, _ = _run("escrow", "status", "job-cli", "--json")
    assert code == 0 and json.loads(out)["state"] == "locked"
    code, out, _ = _run("escrow", "dispute", "job-cli", "--reason", "metrics look fabricated")
    assert code == 0 and "disputed" in out
    code, out, _ = _run("escrow", "list", "--state", "disputed", "--json")
    assert [r["job_id"] for r in json.loads(out)] == ["job-cli"]
    code, _, err = _run("escrow", "resolve-dispute", "job-cli", "--to", "refund", "--json")
    assert code == 2 and "CYXWIZ_ARBITER_PASSPHRASE" in err  # the control plane's passphrase opens no arbiter
    monkeypatch.setenv("CYXWIZ_ARBITER_PASSPHRASE", demo.arbiter_passphrase)
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


def test_stake_unstake_and_status(
    demo: DemoLedger, verifier: VerifierProcess, tmp_path: Path, pki: Pki
) -> None:
    """``cyxwiz escrow stake|unstake|status --node``: the node's key signs the deposit; withdrawal waits
    for the cool-down (refused with one line before it) and pays the wallet the node's certificate key
    named in ``cyxwiz escrow sign-withdrawal``."""
    from cyxwiz.ledger import provision

    ledger = open_ledger(demo.config)
    provision.fund_wallet(
        ledger.chain, payer=ledger._payer, mint=ledger.mint, wallet=demo.node.pubkey(), amount=3_000_000,
        mint_authority=demo.config.load_key("mint_authority"),
    )  # fmt: skip
    node_key = str(demo.config.key_path("node"))
    code, out, err = _run(
        "escrow", "stake", "--node", NODE_PEER, "--amount", "3000000", "--node-key", node_key
    )
    assert code == 0, err
    code, out, _ = _run("escrow", "status", "--node", NODE_PEER, "--json")
    assert code == 0 and json.loads(out)["amount"] == 3_000_000
    # On the node: its certificate key signs where the stake goes back to (issue 17; F1).
    key_file = tmp_path / "node-key.pem"
    write_private_key(key_file, NODE_KEY)
    sign = ("escrow", "sign-withdrawal", "--key", str(key_file), "--wallet", str(demo.node.pubkey()))
    code, _, err = _run(*sign)  # the verifier checks the key's certificate against the CRL (A6)
    assert code != 0 and "--cert" in err and "Traceback" not in err
    cert = tmp_path / "node-cert.pem"
    write_certificate(cert, pki.dev.issuing_ca().issue(
        common_name="node-one", role="worker", public_key=NODE_KEY.public_key()
    ).certificate)  # fmt: skip
    code, signed, err = _run(*sign, "--cert", str(cert))
    assert code == 0, err
    (tmp_path / "withdrawal.json").write_text(signed)
    # The unstake request with the node's signed withdrawal starts the verifier's cool-down too.
    code, out, err = _run(
        "escrow", "unstake", "--node", NODE_PEER, "--withdrawal", str(tmp_path / "withdrawal.json")
    )
    assert code == 0 and "unstake_requested_at" in out, err
    withdraw = ("escrow", "unstake", "--node", NODE_PEER, "--withdraw")
    code, _, err = _run(*withdraw)
    assert code == 2 and "--withdrawal FILE" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(*withdraw, "--withdrawal", str(tmp_path / "withdrawal.json"))
    assert code != 0 and "cool-down ends" in err and "Traceback" not in err
    wallet = txbuild.token_account_of(demo.node.pubkey(), ledger.mint)
    assert ledger.chain.token_amount(wallet) == 0
    # The cool-down over: the verifier service (its own process) co-signs the withdrawal to that wallet.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    backdate_unstake(ledger.store._engine, NODE_PEER, past)
    config = demo.config  # the verifier's own book: its verifier_db, else a file beside its socket
    own = config._path(config.verifier_db) or (config.verifier_socket_path() or verifier.socket_path).parent
    verdicts = own if own.suffix == ".db" else own / "verifier-verdicts.db"
    assert verdicts.exists()
    backdate_unstake(sa.create_engine(f"sqlite:///{verdicts}"), NODE_PEER, past)
    code, out, err = _run(*withdraw, "--withdrawal", str(tmp_path / "withdrawal.json"), "--json")
    assert code == 0, err
    assert json.loads(out)["withdrawn"] and ledger.chain.token_amount(wallet) == 3_000_000
