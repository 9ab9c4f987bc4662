"""``cyxwiz token``: each command once, refusals as one line without traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyxwiz.cli import app
from cyxwiz.pki.devpki import build_dev_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_dev_pki(tmp_path_factory.mktemp("pki"), nodes=("node-1", "node-2"))


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["token", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_init_issue_verify_jwks_rotate(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    ring = tmp_path / "ring"
    code, out, _ = run("init", str(ring))
    assert code == 0 and "created key ring" in out
    code, _, err = run("init", str(ring))
    assert code == 2 and err.startswith("error:") and "Traceback" not in err

    code, token, _ = run("issue", str(ring), "--user-id", "alice")
    token = token.strip()
    assert code == 0 and token.count(".") == 2
    code, out, _ = run("verify", "-", "--kind", "session", "--keyring", str(ring), stdin=token + "\n")
    assert code == 0 and json.loads(out)["claims"]["user_id"] == "alice"
    code, _, err = run("verify", token, "--kind", "job", "--keyring", str(ring))
    assert code == 3 and "not a job token" in err and err.count("\n") == 1 and token not in err

    code, out, _ = run("inspect", token)
    assert code == 0 and json.loads(out)["UNVERIFIED"] is True

    jwks = tmp_path / "jwks.json"
    assert run("jwks", str(ring), "--out", str(jwks))[0] == 0
    assert run("verify", token, "--kind", "session", "--jwks", str(jwks))[0] == 0

    code, out, _ = run("rotate", str(ring))
    assert code == 0 and out.startswith("not due")
    code, out, _ = run("rotate", str(ring), "--force")
    assert code == 0 and out.startswith("rotated")
    assert run("verify", token, "--kind", "session", "--keyring", str(ring))[0] == 0  # old key kept


def test_bound_job_token_via_cli(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.peerid import peer_id

    ring = tmp_path / "ring"
    run("init", str(ring))
    node_id = peer_id(load_certificate(pki.node_cert("node-1")))
    code, token, err = run(
        "issue", str(ring), "--kind", "job", "--node-id", node_id, "--job-id", "job-1",
        "--cert", str(pki.node_cert("node-1")), "--minutes", "30",
    )  # fmt: skip
    assert code == 0, err
    ok = run(
        "verify",
        token.strip(),
        "--kind",
        "job",
        "--keyring",
        str(ring),
        "--cert",
        str(pki.node_cert("node-1")),
    )
    assert ok[0] == 0
    code, _, err = run(
        "verify",
        token.strip(),
        "--kind",
        "job",
        "--keyring",
        str(ring),
        "--cert",
        str(pki.node_cert("node-2")),
    )
    assert code == 3 and "bound to another certificate" in err


def test_bad_input_one_line(tmp_path: Path) -> None:
    code, _, err = run("issue", str(tmp_path / "missing"), "--user-id", "alice")
    assert code == 4 and err.startswith("error:")
    run("init", str(tmp_path / "r"))
    code, _, err = run("issue", str(tmp_path / "r"), "--user-id", "alice", "--node-id", "n")
    assert code == 2 and "exactly one principal" in err
    code, _, err = run("inspect", "garbage")
    assert code == 3 and err.startswith("error:")
