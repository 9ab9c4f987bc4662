"""Renewal stays inside the node's organization (issue 22 with issue 18; A7, A6).

The issuer service renews node certificates with the control plane's issuing CA. A node certified by
another organization of the federation must not be renewed there: it would come back as an org A
certificate, outside org B's roles, names and CRL — revoking org B's issuing CA would no longer cut it off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.issuer.policy import IssuanceRefusedError, NodeCertIssuer, RenewalRequest
from cyxwiz.ledger.payout import SignedRenewalLink
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from tests.pki.federation_fixture import make_org


def _request(cert: x509.Certificate, key_path: Path, cn: str) -> RenewalRequest:
    """What the node sends: a CSR for a new key and the link its current key signs to it."""
    key = ed25519.Ed25519PrivateKey.generate()
    csr = create_csr(key, common_name=cn).public_bytes(serialization.Encoding.PEM).decode()
    link = SignedRenewalLink.sign(old_key=load_private_key(key_path), new_peer_id=peer_id(key))
    return RenewalRequest.build(certificate=cert, csr_pem=csr, link=link.to_dict())


def test_a_node_of_another_organization_is_not_renewed_by_the_control_plane_ca(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1",))
    issuer = NodeCertIssuer.from_dir(pki.ca_dir)
    own = load_certificate(pki.node_cert("node-1"))
    renewed = issuer.renew(_request(own, pki.node_key("node-1"), "node-1"))  # positive control: own node
    renewed.verify_directly_issued_by(load_certificate(pki.ca_cert))

    orgb = make_org(tmp_path / "federation", "orgb")
    foreign = orgb.node("w1.orgb.example", role="worker")
    with pytest.raises(IssuanceRefusedError) as info:
        issuer.renew(_request(foreign.cert, foreign.key_path, "w1.orgb.example"))
    assert info.value.rule == "A7" and "another organization" in info.value.message
