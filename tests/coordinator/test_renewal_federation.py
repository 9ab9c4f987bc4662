"""Renewal stays inside the node's organization (issue 22 with issue 18; A7, A6).

The coordinator renews node certificates with the control plane's issuing CA. A node certified by another
organization of the federation must not be renewed there: it would come back as an org A certificate,
outside org B's roles, names and CRL — revoking org B's issuing CA would no longer cut it off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.coordinator.renewal import NodeCertIssuer
from cyxwiz.errors import AuthorizationError
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.transport.identity import PeerIdentity
from tests.pki.federation_fixture import make_org


def _csr(cn: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return create_csr(key, common_name=cn).public_bytes(serialization.Encoding.PEM).decode()


def test_a_node_of_another_organization_is_not_renewed_by_the_control_plane_ca(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1",))
    issuer = NodeCertIssuer(ca_dir=pki.ca_dir)
    own = PeerIdentity.from_certificate(load_certificate(pki.node_cert("node-1")))
    renewed = issuer.sign(_csr("node-1"), current=own)  # positive control: the control plane's own node
    renewed.verify_directly_issued_by(load_certificate(pki.ca_cert))

    orgb = make_org(tmp_path / "federation", "orgb")
    foreign = PeerIdentity.from_certificate(orgb.node("w1.orgb.example", role="worker").cert)
    with pytest.raises(AuthorizationError) as info:
        issuer.sign(_csr("w1.orgb.example"), current=foreign)
    assert info.value.rule == "A7" and "another organization" in info.value.message
