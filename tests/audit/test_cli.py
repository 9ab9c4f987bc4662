"""`cyxwiz audit verify|tail|query` through the real root CLI: exit codes, one-line errors, output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from cyxwiz.cli import app
from tests.audit.conftest import ManualClock, build_log
from tests.audit.tamper import edit_lines

runner = CliRunner()


@pytest.fixture
def files(log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey) -> list[Path]:
    return build_log(log_dir, clock, signing_key, days=3, per_day=4)


@pytest.fixture
def pubkey(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "audit.pub"
    path.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_verify_ok_exits_zero(files: list[Path], log_dir: Path, pubkey: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(log_dir), "--public-key", str(pubkey)])
    assert result.exit_code == 0, result.output
    assert "OK: 12 records in 3 files over 3 days" in result.output
    assert "signed checkpoints hold; checkpoint size 12 root " in result.output


def test_verify_names_file_and_line_and_exits_one(files: list[Path], log_dir: Path, pubkey: Path) -> None:
    edit_lines(files[1], lambda ls: [ls[0], *ls[2:]])
    result = runner.invoke(app, ["audit", "verify", str(log_dir), "--public-key", str(pubkey)])
    assert result.exit_code == 1
    assert result.output.startswith(f"BROKEN: {files[1].name}:2: deleted: seq 6 missing")


def test_verify_json_report(files: list[Path], log_dir: Path, pubkey: Path) -> None:
    edit_lines(files[2], lambda ls: [*ls[:1], ls[1].replace(b"user-", b"evil-"), *ls[2:]])
    result = runner.invoke(app, ["audit", "verify", str(log_dir), "--public-key", str(pubkey), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["problems"][0] == {
        "kind": "edited",
        "file": files[2].name,
        "line": 2,
        "message": "record seq 10 does not match its hash (edited)",
    }


def test_verify_with_a_wrong_pinned_key_fails(files: list[Path], log_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = runner.invoke(app, ["audit", "verify", str(log_dir), "--public-key", str(other)])
    assert result.exit_code == 1
    assert "signed by another key" in result.output
    unpinned = runner.invoke(app, ["audit", "verify", str(log_dir)])
    assert unpinned.exit_code == 2 and "error: --public-key: verification needs the pinned" in unpinned.stderr


def test_verify_reads_the_env_var_and_refuses_missing_path(
    files: list[Path], log_dir: Path, monkeypatch: pytest.MonkeyPatch, pubkey: Path
) -> None:
    monkeypatch.setenv("CYXWIZ_AUDIT_PUBLIC_KEY", str(pubkey))
    monkeypatch.setenv("CYXWIZ_AUDIT_DIR", str(log_dir))
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    monkeypatch.delenv("CYXWIZ_AUDIT_DIR")
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: PATH: no log given")
    missing = runner.invoke(app, ["audit", "verify", str(log_dir / "nope")])
    assert missing.exit_code == 4 and len(missing.stderr.strip().splitlines()) == 1


def test_tail_shows_the_last_events(files: list[Path], log_dir: Path) -> None:
    result = runner.invoke(app, ["audit", "tail", str(log_dir), "-n", "2", "--json"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [11, 12]
    table = runner.invoke(app, ["audit", "tail", str(log_dir), "-n", "3"])
    assert table.exit_code == 0 and "authenticate" in table.stdout and "user:user-203" in table.stdout


def test_query_filters_by_type_actor_outcome_and_time(files: list[Path], log_dir: Path) -> None:
    def seqs(*args: str) -> list[int]:
        result = runner.invoke(app, ["audit", "query", str(log_dir), "--json", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["seq"] for line in result.stdout.splitlines()]

    assert len(seqs()) == 12
    assert seqs("--actor", "user-101") == [6]
    assert seqs("--outcome", "failure") == [1, 4, 7, 10]  # sample_event fails when i % 3 == 0
    assert seqs("--type", "Payment") == []
    assert seqs("--since", "2026-11-21", "--until", "2026-11-22") == [5, 6, 7, 8]
    assert seqs("--action", "authen", "--limit", "2") == [1, 2]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--type", "Login"], "error: --type: unknown event type"),
        (["--outcome", "maybe"], "error: --outcome: unknown outcome"),
        (["--since", "yesterday"], "error: --since: 'yesterday' is not an ISO date/time"),
    ],
)
def test_query_bad_filters_are_one_line_errors(
    files: list[Path], log_dir: Path, args: list[str], needle: str
) -> None:
    result = runner.invoke(app, ["audit", "query", str(log_dir), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(needle) and len(result.stderr.strip().splitlines()) == 1
