"""CA keys in a PKCS#11 token: ``certutil … --ca-key pkcs11:…`` issues what openssl accepts (A7, A1, A6).

The root and the issuing CA are generated inside SoftHSM2 and every certificate and CRL is signed there;
openssl, as the independent judge, verifies the chain, the CRL and the revocation.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cyxwiz.errors import CertificateError
from cyxwiz.keys import SourcePrivateKey
from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.cli import app as certutil_app
from tests._softhsm import HsmToken

runner = CliRunner()


def cli(*args: str) -> Result:
    result = runner.invoke(certutil_app, list(args), prog_name="cyxwiz certutil")
    return result


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def test_certutil_hierarchy_signed_in_the_token_is_judged_good_by_openssl(
    softhsm: HsmToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root_uri, issuing_uri = softhsm.new_uri("root-ca"), softhsm.new_uri("issuing-ca")
    ok(cli("gen-ca", "--out-cert", "root.pem", "--out-key", root_uri, "--common-name", "HSM Root CA"))
    ok(
        cli(
            "gen-intermediate-ca", "--ca-cert", "root.pem", "--ca-key", root_uri,
            "--out-cert", "issuing.pem", "--out-key", issuing_uri, "--common-name", "HSM Issuing CA",
        )
    )  # fmt: skip
    for name in ("good", "bad"):
        ok(
            cli(
                "gen-cert", "--ca-cert", "issuing.pem", "--ca-key", issuing_uri, "--out-cert", f"{name}.pem",
                "--out-key", f"{name}-key.pem", "--common-name", f"{name}.node", "--role", "worker",
            )
        )  # fmt: skip
    ok(
        cli(
            "revoke",
            "bad.pem",
            "--ca-cert",
            "issuing.pem",
            "--ca-key",
            issuing_uri,
            "--reason",
            "keyCompromise",
        )
    )
    ok(cli("gen-crl", "--ca-cert", "issuing.pem", "--ca-key", issuing_uri, "--out", "crl.pem"))
    ok(cli("bundle", "issuing.pem", "root.pem", "--out", "bundle.pem"))
    # No CA key file was written anywhere: the keys exist only inside the token.
    assert sorted(p.name for p in tmp_path.glob("*key*")) == ["bad-key.pem", "good-key.pem"]
    judged = openssl("verify", "-CAfile", "bundle.pem", "-CRLfile", "crl.pem", "-crl_check", "good.pem")
    assert judged.returncode == 0, judged.stderr
    revoked = openssl("verify", "-CAfile", "bundle.pem", "-CRLfile", "crl.pem", "-crl_check", "bad.pem")
    assert revoked.returncode != 0 and "revoked" in (revoked.stdout + revoked.stderr)
    crl_sig = openssl("crl", "-in", "crl.pem", "-CAfile", "bundle.pem", "-noout")
    assert crl_sig.returncode == 0 and "verify OK" in crl_sig.stderr + crl_sig.stdout
    assert ok(cli("verify", "--ca-bundle", "bundle.pem", "--crl", "crl.pem", "good.pem"))


def test_a_token_key_that_does_not_match_the_ca_certificate_is_refused(
    softhsm: HsmToken, tmp_path: Path
) -> None:
    file_root = CertificateAuthority.create_root(
        cert_path=tmp_path / "root.pem", key_path=tmp_path / "root-key.pem", common_name="File Root"
    )
    other = softhsm.new_uri("other")
    CertificateAuthority.create_root(cert_path=tmp_path / "r2.pem", key_path=other, common_name="HSM Root")
    with pytest.raises(CertificateError) as info:
        CertificateAuthority.from_files(tmp_path / "root.pem", other)  # attack: swap the key under a cert
    assert "do not belong together" in info.value.message
    # positive control: the file key under its own certificate still loads
    assert CertificateAuthority.from_files(tmp_path / "root.pem", tmp_path / "root-key.pem").certificate == (
        file_root.certificate
    )


def test_hsm_ca_object_signs_through_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    uri = softhsm.new_uri("ca")
    ca = CertificateAuthority.create_root(cert_path=tmp_path / "ca.pem", key_path=uri, common_name="HSM CA")
    assert isinstance(ca.private_key, SourcePrivateKey) and ca.key_path == uri
    again = CertificateAuthority.from_files(tmp_path / "ca.pem", uri)
    leaf = again.issue(common_name="w1", role="worker").certificate
    leaf.verify_directly_issued_by(ca.certificate)


def test_node_tls_keys_stay_files(softhsm: HsmToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's ssl cannot use a PKCS#11 key: a pkcs11: URI as a node key is refused, nothing written."""
    monkeypatch.chdir(tmp_path)
    uri = softhsm.new_uri("ca")
    ok(cli("gen-ca", "--out-cert", "ca.pem", "--out-key", uri, "--common-name", "HSM CA"))
    for args in (
        ["gen-cert", "--ca-cert", "ca.pem", "--ca-key", uri, "--out-cert", "n.pem", "--out-key", uri + "x",
         "--common-name", "n1"],
        ["gen-csr", "--out-csr", "n.csr", "--key", uri, "--common-name", "n1"],
    ):  # fmt: skip
        result = cli(*args)
        assert result.exit_code == 2 and "node TLS keys must be files" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem"]


def test_dev_pki_with_its_ca_keys_in_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    """demo --hsm's PKI: both CA keys in the token, a key reference file in place of each key file."""
    from cyxwiz.pki.ca_keys import KEY_REF_FILE
    from cyxwiz.pki.devpki import build_dev_pki

    keys = {"root": softhsm.new_uri("dev-root"), "issuing": softhsm.new_uri("dev-issuing")}
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1",), ca_keys=keys)
    assert not pki.ca_key.exists() and not pki.root_ca_key.exists()
    assert (pki.ca_dir / KEY_REF_FILE).read_text().strip() == keys["issuing"]
    again = build_dev_pki(tmp_path / "pki", nodes=("node-1", "node-2"))  # idempotent, finds the token keys
    ca = again.issuing_ca()
    assert isinstance(ca.private_key, SourcePrivateKey)
    again.revoke(again.node_cert("node-2"))  # what the coordinator's revoker does: CRL signed in the token
    judged = openssl("verify", "-CAfile", str(pki.bundle), "-CRLfile", str(pki.crl), "-crl_check",
                     str(pki.node_cert("node-1")))  # fmt: skip
    assert judged.returncode == 0, judged.stderr
