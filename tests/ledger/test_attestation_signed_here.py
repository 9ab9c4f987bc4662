"""An attestation the verifier service signed itself is known good for its release's co-sign (F1, issue 17).

:meth:`AttestationPolicy.signed_here` spares the second Ed25519 verify of the service's own verdict. It
must never let through a signature that would not verify: it is cached under the signing key, so it only
hits for the exact signed text whose certificate carries that key, and the signer's chain and role are
still checked on every use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.ledger.attestation import (
    AttestationPolicy,
    ReportAttestation,
    ReportSignatureError,
    ReportSignerError,
    sign_attestation,
)
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.keys import load_private_key
from tests.ledger.conftest import Pki

BOUND = {"job_id": "job-a", "node_peer_id": "12D3KooWNode", "node_wallet": "w" * 32, "escrow": "e" * 32}


def _key(path: Path) -> Any:
    return load_private_key(path)


def _check(policy: AttestationPolicy, value: object) -> ReportAttestation:
    return policy.check(
        value, job_id=BOUND["job_id"], node_peer_id=BOUND["node_peer_id"], node_wallet=BOUND["node_wallet"],
        escrow=BOUND["escrow"],
    )  # fmt: skip


def _fresh(pki: Pki) -> AttestationPolicy:
    return AttestationPolicy.from_files(pki.dev.bundle, crls=[pki.dev.crl])


def _sign(key: Any, cert_path: Path, verdict: Any = "pass") -> ReportAttestation:
    return sign_attestation(
        key=key,
        certificate=load_certificate(cert_path),
        report_sha256="cd" * 32,
        verdict=verdict,
        job_id=BOUND["job_id"],
        node_peer_id=BOUND["node_peer_id"],
        node_wallet=BOUND["node_wallet"],
        escrow=BOUND["escrow"],
    )


def test_the_services_own_verdict_checks_without_a_second_verify(pki: Pki) -> None:
    """Positive control: what the service signed and noted passes the full check."""
    key = _key(pki.root / "certs" / "verifier-key.pem")
    attestation = _sign(key, pki.root / "certs" / "verifier-cert.pem")
    policy = _fresh(pki)
    policy.signed_here(attestation, key)
    assert _check(policy, attestation.to_json()).verdict == "pass"


def test_a_signature_by_another_key_under_the_verifiers_certificate_is_still_refused(pki: Pki) -> None:
    """Noted under the key that signed it, which is not the certificate's: the cache never hits."""
    other = _key(pki.root / "nodes" / "node-1-key.pem")
    forged = _sign(other, pki.root / "certs" / "verifier-cert.pem")
    policy = _fresh(pki)
    policy.signed_here(forged, other)
    with pytest.raises(ReportSignatureError, match="signature"):
        _check(policy, forged.to_json())


def test_an_edited_copy_of_a_noted_verdict_is_verified_afresh_and_refused(pki: Pki) -> None:
    key = _key(pki.root / "certs" / "verifier-key.pem")
    failed = _sign(key, pki.root / "certs" / "verifier-cert.pem", verdict="fail")
    policy = _fresh(pki)
    policy.signed_here(failed, key)
    edited = json.loads(failed.to_json())
    edited["verdict"] = "pass"
    with pytest.raises(ReportSignatureError, match="signature"):
        _check(policy, edited)


def test_a_noted_verdict_under_a_non_verifier_certificate_is_refused_by_role(pki: Pki) -> None:
    """The signer's chain and role are checked on every use, noted or not."""
    key = _key(pki.root / "nodes" / "node-1-key.pem")
    attestation = _sign(key, pki.root / "nodes" / "node-1-cert.pem")
    policy = _fresh(pki)
    policy.signed_here(attestation, key)
    with pytest.raises(ReportSignerError, match="verifier"):
        _check(policy, attestation.to_json())
