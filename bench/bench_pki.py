"""PKI throughput against OpenSSL on the same files, same run (issue 2 benchmark).

- issue: leaf certificates (new Ed25519 key + certificate signed by the intermediate) per second, our
  library in-process vs the ``openssl`` CLI doing the same job (genpkey + req + x509 -req per cert).
- verify: certificates verified per second (chain + validity + constraints + EKU + CRL), our library
  vs one ``openssl verify -crl_check`` process given all files at once (its spawn cost amortised).
- verify CLI: ``cyxwiz certutil verify`` vs ``openssl verify``, each one process over the same N files.
- HSM (issue 22): Ed25519 signatures/s through PKCS#11 (SoftHSM2, CKM_EDDSA) ÷ in-process Ed25519, and
  leaf certificates issued/s with the issuing CA key in SoftHSM2 ÷ the same CA with its key in a file.

Ratios > 1 mean we are faster.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cyxwiz.pki.certs import load_certificate, load_certificates, load_crls, write_certificate
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.pki.keys import write_private_key
from cyxwiz.pki.verify import verify_certificate

N_SIGN = 2000
N_ISSUE_HSM = 300
N_ISSUE_OPENSSL = 20
N_ISSUE = 300
N_VERIFY = 300


def _openssl_issue(tmp: Path, ca_cert: Path, ca_key: Path, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        key, csr, cert = tmp / f"o{i}-key.pem", tmp / f"o{i}.csr", tmp / f"o{i}-cert.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
        subprocess.run(
            ["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN=node-{i}", "-out", str(csr)],
            check=True,
        )
        subprocess.run(
            ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "90", "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    return n / (time.perf_counter() - started)


def run_hsm() -> list[tuple[str, float, str]]:
    """Keys in SoftHSM2 vs in-process keys, same messages, same run (interleaved halves)."""
    import os
    import secrets

    from cyxwiz.keys import FileKeySource, create_key_source
    from cyxwiz.keys.pkcs11 import close_sessions
    from cyxwiz.keys.softhsm import CONF_ENV, init_token
    from cyxwiz.pki.ca import CertificateAuthority

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        token = init_token(tmp / "hsm", pin=secrets.token_hex(8), so_pin=secrets.token_hex(8))
        saved = os.environ.get(CONF_ENV)
        os.environ[CONF_ENV] = str(token.conf)
        try:
            hsm = create_key_source(token.uri("bench-sign"))
            local = FileKeySource.create(tmp / "bench-key.pem")
            message = secrets.token_bytes(64)
            timings = {"hsm": 0.0, "local": 0.0}
            for _ in range(2):
                for label, source in (("hsm", hsm), ("local", local)):
                    started = time.perf_counter()
                    for _ in range(N_SIGN // 2):
                        source.sign(message)
                    timings[label] += time.perf_counter() - started
            hsm_sign, local_sign = N_SIGN / timings["hsm"], N_SIGN / timings["local"]

            root = CertificateAuthority.create_root(
                cert_path=tmp / "root.pem", key_path=tmp / "root-key.pem", common_name="Bench Root"
            )
            in_file = root.create_intermediate(
                cert_path=tmp / "file-ca.pem", key_path=tmp / "file-ca-key.pem", common_name="Bench File CA"
            )
            in_token = root.create_intermediate(
                cert_path=tmp / "hsm-ca.pem", key_path=token.uri("bench-ca"), common_name="Bench HSM CA"
            )
            issue = {"hsm": 0.0, "file": 0.0}
            for _ in range(2):
                for label, ca in (("hsm", in_token), ("file", in_file)):
                    started = time.perf_counter()
                    for i in range(N_ISSUE_HSM // 2):
                        ca.issue(common_name=f"node-{i}", role="worker")
                    issue[label] += time.perf_counter() - started
            hsm_issue, file_issue = N_ISSUE_HSM / issue["hsm"], N_ISSUE_HSM / issue["file"]
        finally:
            close_sessions()
            if saved is None:
                os.environ.pop(CONF_ENV, None)
            else:
                os.environ[CONF_ENV] = saved
    return [
        (
            "sign/s: PKCS#11 (SoftHSM2) vs in-process",
            hsm_sign / local_sign,
            f"{hsm_sign:.0f}/s vs {local_sign:.0f}/s, Ed25519 over 64 bytes, {N_SIGN} each",
        ),
        (
            "issue/s: CA key in SoftHSM2 vs in a file",
            hsm_issue / file_issue,
            f"{hsm_issue:.0f}/s vs {file_issue:.0f}/s (new leaf key + cert, signature re-verified)",
        ),
    ]


def run() -> list[tuple[str, float, str]]:
    return [*run_openssl(), *run_hsm()]


def run_openssl() -> list[tuple[str, float, str]]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        pki = build_dev_pki(tmp / "pki")
        ca = pki.issuing_ca()
        leaves = tmp / "leaves"
        leaves.mkdir()

        started = time.perf_counter()
        paths = []
        for i in range(N_ISSUE):
            issued = ca.issue(common_name=f"node-{i}", role="worker")
            assert issued.private_key is not None
            path = leaves / f"n{i}-cert.pem"
            write_private_key(leaves / f"n{i}-key.pem", issued.private_key)
            write_certificate(path, issued.certificate)
            paths.append(path)
        ours_issue = N_ISSUE / (time.perf_counter() - started)
        theirs_issue = _openssl_issue(tmp, pki.ca_cert, pki.ca_key, N_ISSUE_OPENSSL)

        files = paths[:N_VERIFY]
        started = time.perf_counter()
        trusted, crls = load_certificates(pki.bundle), load_crls(pki.crl)
        for path in files:
            verify_certificate(load_certificate(path), trusted=trusted, crls=crls, purpose="client")
        ours_verify = len(files) / (time.perf_counter() - started)

        openssl_cmd = [
            "openssl",
            "verify",
            "-CAfile",
            str(pki.bundle),
            "-CRLfile",
            str(pki.crl),
            "-crl_check",
        ]
        started = time.perf_counter()
        subprocess.run([*openssl_cmd, *map(str, files)], check=True, capture_output=True)
        theirs_verify = len(files) / (time.perf_counter() - started)

        cli = [sys.executable, "-m", "cyxwiz.cli", "certutil", "verify", "--ca-bundle", str(pki.bundle)]
        started = time.perf_counter()
        subprocess.run([*cli, "--crl", str(pki.crl), *map(str, files)], check=True, capture_output=True)
        ours_cli = len(files) / (time.perf_counter() - started)

    return [
        (
            "issue/s: library vs openssl CLI",
            ours_issue / theirs_issue,
            f"{ours_issue:.0f}/s vs {theirs_issue:.0f}/s (openssl: 3 processes per cert)",
        ),
        (
            "verify/s: library vs openssl verify",
            ours_verify / theirs_verify,
            f"{ours_verify:.0f}/s vs {theirs_verify:.0f}/s over {len(files)} certs, CRL checked",
        ),
        (
            "verify/s: certutil CLI vs openssl verify",
            ours_cli / theirs_verify,
            f"{ours_cli:.0f}/s vs {theirs_verify:.0f}/s, one process each (includes Python start-up)",
        ),
    ]


if __name__ == "__main__":
    for label, ratio, why in run():
        print(f"{label:<45} {ratio:8.2f}  {why}")
