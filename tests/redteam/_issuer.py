"""The issuer service as production runs it, for the red-team files that attack it through the coordinator
(issue 17; A6, A7, F1): its own process and audit log, the CA key in it only, and a coordinator whose
certificate issuer is that process's socket."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.issuer.service import IssuerProcess
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.pki.keys import write_private_key
from tests.coordinator.conftest import Env, make_env


@contextmanager
def issuer_and_coordinator(home: Path, nodes: tuple[str, ...]) -> Iterator[tuple[Env, IssuerProcess, Path]]:
    """(the coordinator's test env, the issuer process, the issuer's audit directory)."""
    pki = build_dev_pki(home / "pki", nodes=nodes)
    audit_key = home / "issuer-audit-key.pem"
    write_private_key(audit_key, ed25519.Ed25519PrivateKey.generate())
    audit_dir = home / "issuer-audit"
    argv = [sys.executable, "-m", "cyxwiz.issuer", "serve", "--ca-dir", str(pki.ca_dir),
            "--audit-dir", str(audit_dir), "--audit-key", str(audit_key)]  # fmt: skip
    proc = IssuerProcess(
        argv=argv, env=dict(os.environ), state_dir=home / "issuer", socket_path=home / "i.sock"
    )
    with proc.start():
        remote = proc.client()
        envs = make_env(home, cert_issuer=remote)  # the coordinator: nodes register, renew, admins revoke
        env = next(envs)
        try:
            yield env, proc, audit_dir
        finally:
            next(envs, None)  # the generator stops its coordinator
            remote.close()
