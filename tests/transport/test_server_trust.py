"""Nodes verify the control plane against its own organization's CAs only (A7 federation, I: MITM).

The listeners trust every organization of the federation (the policy limits what each may certify); a
node has no policy, so its server-side bundle must be one organization's. Attack: org B — allowed to
certify workers only — issues a server certificate in the coordinator's name; a node holding the
federation bundle would accept it. Such a bundle is refused before a socket exists (node agent, any TLS
client), and a node with the control plane's bundle refuses org B's server at the handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.certs import certificates_pem
from cyxwiz.pki.federation import Federation
from cyxwiz.pki.server_trust import RULE, ServerTrustError
from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from cyxwiz.transport.tls import client_context
from tests.pki.federation_fixture import FederationWorld, Node, make_world
from tests.transport.conftest import request, whoami_app


@pytest.fixture
def world(tmp_path: Path) -> FederationWorld:
    return make_world(tmp_path)


def serve(world: FederationWorld, server: Node) -> Iterator[MTLSServer]:
    federation = Federation(policy_path=world.policy_path)
    tls = ServerTLS(
        cert=server.cert_path,
        key=server.key_path,
        trust_bundle=federation.write_bundle(world.base / "federation-bundle.pem"),
        crl=None,
        policy=federation,
    )
    with MTLSServer(app=whoami_app, tls=tls) as listener:
        yield listener


def node_context(bundle: Path, node: Node) -> ssl.SSLContext:
    return client_context(trust_bundle=bundle, cert=node.cert_path, key=node.key_path)


def test_the_federation_bundle_is_refused_for_verifying_servers(world: FederationWorld) -> None:
    from agents.node_client import client_ssl_context
    from agents.settings import AgentSettings

    b_node = world.b.node("w1.orgb.example", role="worker")
    federation_bundle = Federation(policy_path=world.policy_path).write_bundle(world.base / "fed.pem")
    node_context(world.a.bundle_path, b_node)  # positive control: the control plane's own bundle
    with pytest.raises(ServerTrustError) as info:
        node_context(federation_bundle, b_node)
    assert info.value.rule == RULE and "2 independent roots" in info.value.message
    settings = AgentSettings(cert=b_node.cert_path, key=b_node.key_path, ca_bundle=federation_bundle)
    with pytest.raises(ServerTrustError):
        client_ssl_context(settings)  # the node agent refuses to start on it
    with pytest.raises(ServerTrustError):
        client_context(trust_bundle=federation_bundle)  # and so does any client (users' too)


def test_org_b_cannot_stand_in_for_the_coordinator(world: FederationWorld) -> None:
    a_node = world.a.node("a-worker", role="worker")
    genuine = world.a.node("coordinator", role="coordinator", server=True, dns=("localhost",))
    for listener in serve(world, genuine):  # positive control: the real coordinator is reached
        assert request(listener.port, node_context(world.a.bundle_path, a_node))[0] == 200
    rogue = world.b.node("localhost", role="coordinator", server=True, dns=("localhost",))
    for listener in serve(world, rogue):
        with pytest.raises(ssl.SSLCertVerificationError):
            request(listener.port, node_context(world.a.bundle_path, a_node))


def test_independent_roots_stay_apart_but_a_root_rollover_is_one_organization(
    world: FederationWorld, tmp_path: Path
) -> None:
    a = world.a
    # org A's root cross-certifies org B's issuing CA: that links no root, B's root stays independent
    cross = a.root.cross_sign(world.b.issuing.certificate)
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(
        certificates_pem([a.issuing.certificate, a.root.certificate, cross, world.b.root.certificate])
    )
    with pytest.raises(ServerTrustError) as info:
        client_context(trust_bundle=mixed)
    assert info.value.rule == RULE
    # a rollover: A's new root, certified by its old root, next to it
    new_root = CertificateAuthority.create_root(
        cert_path=tmp_path / "root2-cert.pem", key_path=tmp_path / "root2-key.pem",
        common_name="orga Root CA 2", organization="orga",
    )  # fmt: skip
    rollover = tmp_path / "rollover.pem"
    rollover.write_bytes(
        certificates_pem(
            [
                a.issuing.certificate,
                a.root.certificate,
                new_root.certificate,
                a.root.cross_sign(new_root.certificate),
            ]
        )
    )
    client_context(trust_bundle=rollover)
    # a leaf in the trust store would be an anchor by itself
    leaf = a.node("pinned", role="coordinator", server=True)
    pinned = tmp_path / "pinned.pem"
    pinned.write_bytes(a.bundle_path.read_bytes() + leaf.cert_path.read_bytes())
    with pytest.raises(ServerTrustError) as info:
        client_context(trust_bundle=pinned)
    assert info.value.rule == "A3"
