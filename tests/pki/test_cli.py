"""``cyxwiz certutil`` end to end, with openssl as the independent judge (A1–A6 acceptance).

Commands run in-process through typer's runner (fast); openssl runs as a real subprocess on the files.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner, Result

from cyxwiz.cli import app
from cyxwiz.pki.certs import load_certificate, write_certificate
from cyxwiz.pki.cli import app as certutil_app
from cyxwiz.pki.peerid import peer_id
from tests.pki.conftest import self_signed_leaf

runner = CliRunner()
Run = Callable[..., Result]

SUBCOMMANDS = [
    "gen-ca",
    "gen-intermediate-ca",
    "gen-cert",
    "gen-csr",
    "sign-csr",
    "bundle",
    "revoke",
    "gen-crl",
    "verify",
    "inspect",
    "peer-id",
    "policy-bundle",
    "fetch-crls",
]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str) -> Result:
        # The group app directly: building the whole root CLI per call would cost ~0.1 s each.
        return runner.invoke(certutil_app, list(args), prog_name="cyxwiz certutil")

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


def refused(result: Result, *, code: int | None = None) -> str:
    """A refusal: non-zero exit, exactly one 'error: ...' line on stderr, no traceback."""
    assert result.exit_code != 0, result.stdout
    if code is not None:
        assert result.exit_code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def hypha_hierarchy(run: Run) -> None:
    """The hierarchy of Hypha's documentation, with its exact commands, plus a worker and a user."""
    ok(
        run(
            "gen-ca",
            "--out-cert",
            "root-ca-cert.pem",
            "--out-key",
            "root-ca-key.pem",
            "--common-name",
            "Hypha Root CA",
        )
    )
    ok(
        run(
            "gen-intermediate-ca",
            "--ca-cert",
            "root-ca-cert.pem",
            "--ca-key",
            "root-ca-key.pem",
            "--out-cert",
            "intermediate-ca-cert.pem",
            "--out-key",
            "intermediate-ca-key.pem",
            "--common-name",
            "Hypha Intermediate CA",
        )
    )
    ca = ("--ca-cert", "intermediate-ca-cert.pem", "--ca-key", "intermediate-ca-key.pem")
    ok(
        run(
            "gen-cert",
            *ca,
            "--out-cert",
            "gateway-01-cert.pem",
            "--out-key",
            "gateway-01-key.pem",
            "--common-name",
            "gateway-01.hypha.local",
            "--role",
            "gateway",
            "--ip",
            "127.0.0.1",
        )
    )
    ok(
        run(
            "gen-cert",
            *ca,
            "--out-cert",
            "worker-01-cert.pem",
            "--out-key",
            "worker-01-key.pem",
            "--common-name",
            "worker-01",
            "--role",
            "worker",
        )
    )
    ok(
        run(
            "gen-cert",
            *ca,
            "--out-cert",
            "user-cert.pem",
            "--out-key",
            "user-key.pem",
            "--common-name",
            "alice",
            "--role",
            "user",
        )
    )
    ok(run("bundle", "intermediate-ca-cert.pem", "root-ca-cert.pem", "--out", "ca-bundle.pem"))
    ok(run("gen-crl", *ca, "--out", "crls.pem"))


LEAVES = ["gateway-01-cert.pem", "worker-01-cert.pem", "user-cert.pem"]
CA_ARGS = ("--ca-cert", "intermediate-ca-cert.pem", "--ca-key", "intermediate-ca-key.pem")


def test_full_hierarchy_judged_by_openssl(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    for name in ("root-ca-key.pem", "intermediate-ca-key.pem", "gateway-01-key.pem"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    for name in ("root-ca-cert.pem", "ca-bundle.pem", "crls.pem", "worker-01-cert.pem"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644

    judged = openssl("verify", "-CAfile", "ca-bundle.pem", "-CRLfile", "crls.pem", "-crl_check", *LEAVES)
    assert judged.returncode == 0, judged.stderr
    assert judged.stdout.count(": OK") == 3
    assert (
        ok(run("verify", "--ca-bundle", "ca-bundle.pem", "--crl", "crls.pem", *LEAVES)).stdout.count(": OK")
        == 3
    )

    crl_text = openssl("crl", "-in", "crls.pem", "-noout", "-text")
    assert crl_text.returncode == 0 and "Next Update" in crl_text.stdout and "ED25519" in crl_text.stdout
    for cert in (*LEAVES, "root-ca-cert.pem"):
        dates = openssl("x509", "-in", cert, "-noout", "-dates")
        assert dates.returncode == 0 and "notBefore=" in dates.stdout and "notAfter=" in dates.stdout
    purpose = openssl(
        "x509", "-in", "gateway-01-cert.pem", "-noout", "-ext", "extendedKeyUsage,subjectAltName"
    )
    assert (
        "TLS Web Server Authentication" in purpose.stdout and "DNS:gateway-01.hypha.local" in purpose.stdout
    )

    # Revoke the worker: both judges now refuse it and still accept the others.
    ok(run("revoke", "worker-01-cert.pem", *CA_ARGS, "--reason", "keyCompromise"))
    ok(run("gen-crl", *CA_ARGS, "--out", "crls.pem"))
    judged = openssl("verify", "-CAfile", "ca-bundle.pem", "-CRLfile", "crls.pem", "-crl_check", *LEAVES)
    assert judged.returncode != 0
    assert "certificate revoked" in judged.stdout + judged.stderr
    assert judged.stdout.count(": OK") == 2
    result = run("verify", "--ca-bundle", "ca-bundle.pem", "--crl", "crls.pem", *LEAVES)
    assert result.exit_code == 1
    assert "worker-01-cert.pem" in refused(result) and "revoked" in result.stderr
    assert result.stdout.count(": OK") == 2
    assert "Key Compromise" in openssl("crl", "-in", "crls.pem", "-noout", "-text").stdout


def test_csr_flow_keeps_the_key_on_the_node(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    ok(
        run(
            "gen-csr",
            "--out-key",
            "node-key.pem",
            "--out-csr",
            "node.csr",
            "--common-name",
            "worker-02",
            "--dns",
            "worker-02.local",
        )
    )
    assert "Certificate Request" in openssl("req", "-in", "node.csr", "-noout", "-text", "-verify").stdout
    ok(run("sign-csr", "node.csr", *CA_ARGS, "--out-cert", "node-cert.pem", "--role", "worker"))
    ok(run("verify", "--ca-bundle", "ca-bundle.pem", "--purpose", "client", "node-cert.pem"))
    cert = load_certificate(tmp_path / "node-cert.pem")
    key_pid = ok(run("peer-id", "--key", "node-key.pem")).stdout.strip()
    assert ok(run("peer-id", "node-cert.pem")).stdout.strip() == key_pid == peer_id(cert)


def test_passphrase_protected_ca(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pass.txt").write_text("hunter2-but-longer\n")
    ok(
        run(
            "gen-ca",
            "--out-cert",
            "ca.pem",
            "--out-key",
            "ca-key.pem",
            "--cn",
            "Enc CA",
            "--passphrase-file",
            "pass.txt",
        )
    )
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "ca-key.pem").read_bytes()
    args = (
        "--ca-cert",
        "ca.pem",
        "--ca-key",
        "ca-key.pem",
        "--out-cert",
        "n.pem",
        "--out-key",
        "n-key.pem",
        "--cn",
        "n",
    )
    line = refused(run("gen-cert", *args))
    assert "passphrase" in line and "ca-key.pem" in line
    assert not (tmp_path / "n-key.pem").exists()
    ok(run("gen-cert", *args, "--ca-passphrase-file", "pass.txt"))
    monkeypatch.setenv("CYXWIZ_CA_PASSPHRASE", "hunter2-but-longer")
    ok(run("gen-crl", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem"))


def test_inspect_and_json(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    info = json.loads(ok(run("inspect", "--json", "gateway-01-cert.pem")).stdout)
    cert = load_certificate(tmp_path / "gateway-01-cert.pem")
    assert info["peer_id"] == peer_id(cert)
    assert info["role"] == "gateway" and info["key_type"] == "Ed25519" and not info["is_ca"]
    assert "serverAuth" in info["extended_key_usage"] and "IP:127.0.0.1" in info["subject_alt_names"]
    fingerprint = openssl("x509", "-in", "gateway-01-cert.pem", "-noout", "-fingerprint", "-sha256").stdout
    assert fingerprint.strip().split("=", 1)[1] == info["sha256_fingerprint"]
    bundle = json.loads(ok(run("inspect", "--json", "ca-bundle.pem")).stdout)
    assert [b["is_ca"] for b in bundle] == [True, True] and bundle[1]["self_signed"]
    crl = json.loads(ok(run("inspect", "--json", "crls.pem")).stdout)
    assert crl["revoked"] == [] and crl["next_update"]
    human = ok(run("inspect", "worker-01-cert.pem")).stdout
    assert "peer_id" in human and "12D3KooW" in human


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(command: str) -> None:
    result = runner.invoke(app, ["certutil", command, "--help"], prog_name="cyxwiz", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"cyxwiz certutil {command}" in result.stdout


# --- refusals: one line naming the file and the rule, non-zero exit, nothing half-written ------------


def test_refuses_rsa_and_traditional_ca_keys(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fmt = serialization.PrivateFormat
    for name, form in (("rsa-pkcs8.pem", fmt.PKCS8), ("rsa-trad.pem", fmt.TraditionalOpenSSL)):
        data = rsa_key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(0o600)
    args = (
        "gen-cert",
        "--ca-cert",
        "intermediate-ca-cert.pem",
        "--out-cert",
        "x.pem",
        "--out-key",
        "x-key.pem",
        "--cn",
        "x",
    )
    line = refused(run(*args, "--ca-key", "rsa-pkcs8.pem"), code=2)
    assert "rsa-pkcs8.pem" in line and "RSA private key refused: only Ed25519" in line and "A2" in line
    line = refused(run(*args, "--ca-key", "rsa-trad.pem"), code=2)
    assert "rsa-trad.pem" in line and "PKCS#1" in line
    assert "openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.pkcs8.pem" in line
    assert not (tmp_path / "x.pem").exists() and not (tmp_path / "x-key.pem").exists()


def test_refuses_group_readable_key(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    os.chmod(tmp_path / "intermediate-ca-key.pem", 0o640)
    line = refused(run("gen-crl", *CA_ARGS))
    assert "intermediate-ca-key.pem" in line and "mode 0640" in line and "chmod 600" in line and "A4" in line


def test_refuses_to_overwrite(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    before = (tmp_path / "root-ca-key.pem").read_bytes()
    line = refused(
        run("gen-ca", "--out-cert", "root-ca-cert.pem", "--out-key", "root-ca-key.pem", "--cn", "X")
    )
    assert "refusing to overwrite" in line and "--force" in line
    assert (tmp_path / "root-ca-key.pem").read_bytes() == before


def test_verify_refusals(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    cert, _ = self_signed_leaf()
    write_certificate(tmp_path / "self.pem", cert)
    line = refused(run("verify", "--ca-bundle", "ca-bundle.pem", "self.pem"), code=1)
    assert "self.pem" in line and "self-signed leaf" in line and "A3" in line
    line = refused(run("verify", "--ca-bundle", "ca-bundle.pem", "intermediate-ca-cert.pem"), code=1)
    assert "used as a leaf" in line
    line = refused(run("verify", "--ca-bundle", "ca-bundle.pem", "--at", "2100-01-01", "worker-01-cert.pem"))
    assert "expired" in line and "worker-01-cert.pem" in line
    line = refused(run("verify", "--ca-bundle", "ca-bundle.pem", "--at", "2000-01-01", "worker-01-cert.pem"))
    assert "not valid before" in line
    line = refused(run("verify", "--ca-bundle", "ca-bundle.pem", "--purpose", "server", "user-cert.pem"))
    assert "not valid for TLS server use" in line
    ok(run("gen-ca", "--out-cert", "other-ca.pem", "--out-key", "other-ca-key.pem", "--cn", "Other"))
    line = refused(run("verify", "--ca-bundle", "other-ca.pem", "worker-01-cert.pem"), code=1)
    assert "not in the trust bundle" in line
    line = refused(run("verify", "--ca-bundle", "worker-01-cert.pem", "garbage.pem"), code=2)
    assert "garbage.pem" in line


def test_bundle_refuses_leaves(run: Run) -> None:
    hypha_hierarchy(run)
    line = refused(run("bundle", "root-ca-cert.pem", "worker-01-cert.pem", "--out", "b.pem"))
    assert "worker-01-cert.pem" in line and "not a CA" in line


def test_revoke_refusals(run: Run, tmp_path: Path) -> None:
    hypha_hierarchy(run)
    assert "unknown revocation reason" in refused(
        run("revoke", "worker-01-cert.pem", *CA_ARGS, "--reason", "meh")
    )
    ok(run("revoke", "worker-01-cert.pem", *CA_ARGS))
    assert "already revoked" in refused(run("revoke", "worker-01-cert.pem", *CA_ARGS))
    root_args = ("--ca-cert", "root-ca-cert.pem", "--ca-key", "root-ca-key.pem")
    assert "not issued by this CA" in refused(run("revoke", "worker-01-cert.pem", *root_args))
    serial = load_certificate(tmp_path / "gateway-01-cert.pem").serial_number
    ok(run("revoke", "--serial", f"{serial:x}", *CA_ARGS, "--reason", "superseded"))
