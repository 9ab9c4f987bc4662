"""The issuer service as production runs it, for the red-team files that attack it through the coordinator
(issue 17; A6, A7, F1): its own process and audit log, the CA key in it only, and a coordinator whose
certificate issuer is that process's socket."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.audit.reader import iter_events
from cyxwiz.issuer.service import IssuerProcess
from cyxwiz.ledger.payout import SignedRenewalLink
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import load_private_key, write_private_key
from cyxwiz.pki.peerid import peer_id
from tests.coordinator.conftest import Env, auth, make_env


@dataclass
class IssuerWorld:
    env: Env
    issuer: IssuerProcess
    audit_dir: Path

    @property
    def pki(self) -> DevPKI:
        return self.env.pki

    def outcomes(self, action: str) -> list[str]:
        """The issuer's own audit record of ``action`` ("certificate.issue", "certificate.revoke"):
        "success" per certificate signed or revoked, "denied" per refusal."""
        return [e.event["outcome"] for e in iter_events(self.audit_dir) if e.event["action"] == action]


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


def node_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = load_private_key(path)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


@dataclass(frozen=True)
class Renewed:
    """A node's honest renewal through the coordinator: its new key and certificate on disk, and the
    session the coordinator answered with."""

    key: ed25519.Ed25519PrivateKey
    cert_path: Path
    key_path: Path
    answer: dict[str, Any]


def renew_through_coordinator(env: Env, name: str, session_token: str, out: Path) -> Renewed:
    """``name`` renews for a new key over mTLS, with the link its current key signed (the positive control
    of the issuer red-team files); the new certificate and key are written under ``out``."""
    new = ed25519.Ed25519PrivateKey.generate()
    link = SignedRenewalLink.sign(old_key=node_key(env.pki.node_key(name)), new_peer_id=peer_id(new))
    csr = create_csr(new, common_name=name).public_bytes(serialization.Encoding.PEM).decode()
    with env.client(name) as c:
        r = c.post(
            "/v1/nodes/renew", json={"csr": csr, "renewal_link": link.to_dict()}, headers=auth(session_token)
        )
        assert r.status_code == 200, r.text
    answer = r.json()
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    cert_path.write_text(answer["certificate"])
    write_private_key(key_path, new)
    return Renewed(key=new, cert_path=cert_path, key_path=key_path, answer=answer)
