"""Federation end to end on the real coordinator over mTLS (issue 22; A7, C1, A5, A6).

Org A runs the control plane; nodes of org A and of org B (workers under .orgb.example only) register and
heartbeat with their own certificates (identity = PeerID); org B's attempt to certify a verifier is refused
at the handshake; revoking org B's issuing CA cuts off org B's node within 5 s while org A's keeps going.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cyxwiz.audit import MemorySink
from cyxwiz.coordinator.service import CoordinatorHandle, start_coordinator
from cyxwiz.pki.federation import Federation
from cyxwiz.pki.peerid import peer_id
from cyxwiz.transport.tls import client_context
from tests.pki.federation_fixture import FederationWorld, Node, make_world

DEADLINE_S = 5.0


@pytest.fixture
def world(tmp_path: Path) -> FederationWorld:
    return make_world(tmp_path / "federation")


@pytest.fixture
def coordinator(
    world: FederationWorld, tmp_path: Path
) -> Iterator[tuple[CoordinatorHandle, Path, MemorySink]]:
    server = world.a.node(
        "coordinator", role="coordinator", server=True, dns=("localhost",), ips=("127.0.0.1",)
    )
    federation = Federation(policy_path=world.policy_path)
    bundle = federation.write_bundle(world.base / "federation-bundle.pem")
    audit = MemorySink()
    coord = start_coordinator(
        cert=server.cert_path, key=server.key_path, trust_bundle=bundle, crl=None, policy=federation,
        state_dir=tmp_path / "state", audit=audit,
    )  # fmt: skip
    coord.server.tls.poll_interval = 0.1
    try:
        yield coord, bundle, audit
    finally:
        coord.stop()


def client(coord: CoordinatorHandle, control_plane: Path, node: Node) -> httpx.Client:
    # A node trusts only the control plane's own CAs (org A's bundle) for the server side, whatever
    # organization certified the node: never the federation bundle the listener uses (A7).
    ctx = client_context(trust_bundle=control_plane, cert=node.cert_path, key=node.key_path)
    return httpx.Client(base_url=coord.url, verify=ctx, timeout=5)


def register(http: httpx.Client) -> dict[str, Any]:
    reply = http.post("/v1/nodes/register", json={"hardware": {"gpus": 1, "cpu_cores": 4}})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def heartbeat(http: httpx.Client, session: dict[str, Any]) -> int:
    reply = http.post(
        "/v1/nodes/heartbeat",
        json={"node_id": session["node_id"]},
        headers={"authorization": f"Bearer {session['session_token']}"},
    )
    return reply.status_code


def test_two_organizations_on_the_coordinator(
    coordinator: tuple[CoordinatorHandle, Path, MemorySink], world: FederationWorld
) -> None:
    coord, _, audit = coordinator
    bundle = world.a.bundle_path
    a_node = world.a.node("a-worker", role="worker")
    b_node = world.b.node("w1.orgb.example", role="worker")
    with client(coord, bundle, a_node) as a_http, client(coord, bundle, b_node) as b_http:
        a_session, b_session = register(a_http), register(b_http)
        assert (a_session["peer_id"], b_session["peer_id"]) == (peer_id(a_node.cert), peer_id(b_node.cert))
        assert heartbeat(a_http, a_session) == 200 and heartbeat(b_http, b_session) == 200

        b_verifier = world.b.node("v1.orgb.example", role="verifier")  # org B certifies a verifier
        with client(coord, bundle, b_verifier) as rogue, pytest.raises(httpx.TransportError):
            register(rogue)
        reasons = [str(e.details.get("reason")) for e in audit.events if e.action == "certificate.verify"]
        assert any("A7/role" in r for r in reasons)

        world.b.root.revoke(world.b.issuing.certificate, reason="keyCompromise")
        world.b.write_crls()
        started, cut = time.monotonic(), None
        while time.monotonic() - started < DEADLINE_S:
            assert heartbeat(a_http, a_session) == 200  # org A's node is served throughout
            try:
                heartbeat(b_http, b_session)
            except httpx.TransportError:
                cut = time.monotonic() - started
                break
            time.sleep(0.05)
        assert cut is not None, f"org B's node still served {DEADLINE_S} s after its CA was revoked"
        with client(coord, bundle, b_node) as again, pytest.raises(httpx.TransportError):
            register(again)
        assert heartbeat(a_http, a_session) == 200


def test_production_listeners_take_the_policy_from_the_environment(world: FederationWorld) -> None:
    """infra.serve: CYXWIZ_TRUST_POLICY turns federation on; a single CYXWIZ_CRL beside it is refused."""
    from cyxwiz.errors import ConfigError
    from infra.serve import ListenerSettings, _federation

    env = {
        "CYXWIZ_TLS_CERT": "c.pem",
        "CYXWIZ_TLS_KEY": "k.pem",
        "CYXWIZ_CA_BUNDLE": "b.pem",
        "CYXWIZ_TRUST_POLICY": str(world.policy_path),
    }
    settings = ListenerSettings.from_env("gateway", env)
    assert isinstance(_federation(settings, env), Federation)
    assert _federation(settings, {}) is None
    with pytest.raises(ConfigError) as info:
        _federation(ListenerSettings.from_env("gateway", {**env, "CYXWIZ_CRL": "crl.pem"}), env)
    assert info.value.field == "CYXWIZ_CRL" and info.value.rule == "A7"


def test_an_org_added_and_removed_at_run_time_on_every_policy_listener(
    coordinator: tuple[CoordinatorHandle, Path, MemorySink], world: FederationWorld
) -> None:
    """A7: org C joins the policy file while the coordinator and the gateway run: both serve its worker
    from their next poll (no restart), and both refuse it again once it is removed; org A throughout."""
    from cyxwiz.gateway.service import build_gateway
    from cyxwiz.tokens.keyring import KeyRing
    from cyxwiz.tokens.verifier import TokenVerifier
    from tests.pki.federation_fixture import make_org

    coord, bundle, _ = coordinator
    gw_cert = world.a.node("gateway", role="gateway", server=True, dns=("localhost",), ips=("127.0.0.1",))
    verifier = TokenVerifier.from_keyring(KeyRing.generate(), issuer="i", audience="a")
    gateway, _ = build_gateway(
        cert=gw_cert.cert_path, key=gw_cert.key_path, trust_bundle=bundle, crl=None,
        upstream="http://127.0.0.1:9", pool="gpu", verifier=verifier,
        policy=Federation(policy_path=world.policy_path),
    )  # fmt: skip
    gateway.tls.poll_interval = 0.1
    world.extra["orgc"] = make_org(world.base, "orgc")
    c_node, a_node = (
        world.extra["orgc"].node("w1.orgc.example", role="worker"),
        world.a.node("a", role="worker"),
    )

    def reaches(node: Node) -> tuple[bool, bool]:
        """(coordinator, gateway): True when the node got an HTTP answer, False when TLS cut it off."""
        seen = []
        for url in (coord.url, gateway.url):
            ctx = client_context(trust_bundle=world.a.bundle_path, cert=node.cert_path, key=node.key_path)
            try:
                with httpx.Client(base_url=url, verify=ctx, timeout=5) as http:
                    http.get("/v1/nodes/me")  # any answer (401, 404) means the listener took the peer
                seen.append(True)
            except httpx.TransportError:
                seen.append(False)
        return seen[0], seen[1]

    def settle(want: tuple[bool, bool], node: Node) -> bool:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if reaches(node) == want:
                return True
            time.sleep(0.1)
        return False

    with gateway:
        assert reaches(a_node) == (True, True)  # positive control
        assert reaches(c_node) == (False, False)
        world.write_policy(extra=("orgc",))
        assert settle((True, True), c_node), "org C not served by both listeners after it was added"
        assert reaches(a_node) == (True, True)
        world.write_policy()
        assert settle((False, False), c_node), "org C still served after it was removed"
        assert reaches(a_node) == (True, True)
