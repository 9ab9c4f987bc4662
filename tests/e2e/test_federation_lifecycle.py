"""Federation acceptance on the whole embedded stack (issue 22; A7, C1, A6, F1).

Org A runs the control plane (the dev PKI: coordinator, gateway, node-1); org B, a second organization
with its own root → issuing CA, may certify workers under ``.orgb.example`` only. Both organizations'
nodes run as real agents (through the gateway, Prefect lifecycle, sandbox, verification, escrow release
to their own wallets). Org B's attempt to certify a verifier is refused at the coordinator's handshake
with the rule named and nothing registered. Revoking org B's issuing CA (its root's CRL file replaced)
cuts org B's node off the coordinator and the gateway within 5 s — measured by polling — while org A's
node is served at every poll and keeps heartbeating.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.peerid import peer_id
from cyxwiz.transport.tls import client_context
from tests.e2e.lifecycle_conftest import QUICK_POLL, audit_events, node_id_of, tiny_job, wait_until
from tests.pki.federation_fixture import ALL_ROLES, Org, make_org

pytestmark = [pytest.mark.slow, pytest.mark.prefect, pytest.mark.timeout(900)]

B_NODE = "w1.orgb.example"
DEADLINE_S = 5.0


def _write_policy(home: Path, pki: Any, orgb: Org) -> Path:
    """Org A = the dev PKI (its bundle; one CRL file with its root's and issuing CA's CRLs) and org B."""
    fed = home / "federation"
    orga_crls = fed / "orga-crls.pem"
    orga_crls.write_bytes((pki.root_ca_cert.parent / "ca-crl.pem").read_bytes() + pki.crl.read_bytes())
    policy = fed / "trust-policy.yaml"
    entries = [
        {"name": "orga", "bundle": str(pki.bundle), "crl": str(orga_crls), "roles": ALL_ROLES},
        {"name": "orgb", "bundle": "orgb/bundle.pem", "crl": "orgb/crls.pem", "roles": ["worker"],
         "names": [".orgb.example"]},
    ]  # fmt: skip
    policy.write_text(yaml.safe_dump({"version": 1, "organizations": entries}))
    return policy


@pytest.fixture(scope="module")
def federated() -> Iterator[tuple[Any, Org]]:
    from cyxwiz.pki.devpki import build_dev_pki
    from infra.stack import embedded_stack
    from tasks import services

    saved = dict(os.environ)
    home = Path(tempfile.mkdtemp(prefix="cyxfed-", dir="/tmp"))  # short: the sandbox's socket path
    try:
        pki = build_dev_pki(home / "pki", nodes=("node-1",))
        orgb = make_org(home / "federation", "orgb")
        b_node = orgb.node(B_NODE, role="worker")
        with embedded_stack(
            home, say=lambda _m: None, nodes=("node-1",), trust_policy=_write_policy(home, pki, orgb),
            foreign_nodes={B_NODE: (b_node.cert_path, b_node.key_path)},
        ) as built:  # fmt: skip
            built.env.update(QUICK_POLL)
            built.start_agent("node-1")
            built.start_agent(B_NODE)
            built.wait_for_node("node-1")
            built.wait_for_node(B_NODE)
            yield built, orgb
    finally:
        os.environ.clear()
        os.environ.update(saved)
        services.reset()
        shutil.rmtree(home, ignore_errors=True)


def _served(url: str, bundle: Path, cert: Path, key: Path, *, timeout: float = 30) -> bool | None:
    """True when the listener answered over HTTP (any status), False when it refused the peer (a TLS
    alert, or the connection closed right after the handshake), None when no answer came in time: on a
    loaded host a slow answer is neither service nor refusal."""
    ctx = client_context(trust_bundle=bundle, cert=cert, key=key)
    try:
        with httpx.Client(base_url=url, verify=ctx, timeout=timeout) as http:
            http.get("/v1/nodes/whoami")
    except httpx.TimeoutException:
        return None
    except httpx.TransportError:
        return False
    return True


def test_two_organizations_take_jobs_and_org_b_is_cut_off_alone(federated: tuple[Any, Org]) -> None:
    from prefect.settings import get_current_settings, temporary_settings

    from flows.job_lifecycle import job_lifecycle

    stack, orgb = federated
    b_cert = stack.foreign_nodes[B_NODE][0]
    b_record = next(n for n in stack.coordinator.store.list_nodes() if n.node_id == node_id_of(stack, B_NODE))
    assert b_record.peer_id == peer_id(load_certificate(b_cert))  # identity = the PeerID, also for org B

    # Both organizations' nodes take real jobs at the same time and are paid to their own wallets (F1).
    names = ("node-1", B_NODE)
    funded = {name: stack.fund(tiny_job(epochs=2)) for name in names}  # the user's wallet signs in turn
    before = stack.balances()
    api_url = get_current_settings().api.url  # a thread starts with no Prefect settings context

    def run(name: str) -> dict[str, Any]:
        with temporary_settings(updates={"api.url": api_url}):
            return dict(job_lifecycle(funded[name], node=name))

    with ThreadPoolExecutor(max_workers=2) as pool:
        summaries = dict(zip(names, pool.map(run, names), strict=True))
    after = stack.balances()
    for name, summary in summaries.items():
        assert summary["node_run"]["state"] == "COMPLETED", (name, summary["node_run"])
        assert summary["verification"]["passed"] is True, (name, summary["verification"]["failed"])
        assert summary["settlement"]["state"] == "released", name
        assert after[f"node:{name}"] - before[f"node:{name}"] == funded[name]["payment"]

    # Org B certifies a verifier: refused at the handshake, rule named, nothing registered (A7/role).
    pki = stack.pki
    rogue = orgb.node("v1.orgb.example", role="verifier")
    assert _served(stack.coordinator.url, pki.bundle, rogue.cert_path, rogue.key_path) is False
    reasons = [str(e.get("details", {}).get("reason")) for e in audit_events(stack)]
    assert any("A7/role" in r and "'orgb'" in r for r in reasons)
    assert not any("v1.orgb.example" in n.subject for n in stack.coordinator.store.list_nodes())

    # Revoking org B's issuing CA cuts org B off both listeners within 5 s; org A is served throughout.
    a_files = (pki.node_cert("node-1"), pki.node_key("node-1"))
    b_files = stack.foreign_nodes[B_NODE]
    gateway = stack.env["CYXWIZ_GATEWAY_URL"]
    listeners = (stack.coordinator.url, gateway)
    assert all(_served(url, pki.bundle, *b_files) is True for url in listeners)  # positive control
    orgb.root.revoke(orgb.issuing.certificate, reason="keyCompromise")
    orgb.write_crls()
    # Org B is probed first in each round and the cut is timed when its probes end, so the time org A's
    # probes take on a loaded host is not charged to the revocation (nor hides it).
    started, cut = time.monotonic(), None
    while cut is None and time.monotonic() - started < DEADLINE_S:
        if all(_served(url, pki.bundle, *b_files, timeout=DEADLINE_S) is False for url in listeners):
            cut = time.monotonic() - started
        # org A at every poll: never refused (a timeout on a loaded host is no refusal)
        assert all(_served(url, pki.bundle, *a_files) is not False for url in listeners)
        time.sleep(0.1)
    assert cut is not None and cut <= DEADLINE_S, (
        f"org B still served {DEADLINE_S} s after its issuing CA was revoked (cut: {cut})"
    )
    print(f"federation e2e: org B cut off coordinator and gateway {cut:.2f} s after its CRL was replaced")
    # ... and org A's agent keeps heartbeating after the cut (its own live connections untouched)
    a_id = node_id_of(stack, "node-1")
    at_cut = stack.coordinator.store.node(a_id).last_heartbeat
    assert wait_until(lambda: stack.coordinator.store.node(a_id).last_heartbeat != at_cut, timeout=60), (
        "org A's node stopped heartbeating"
    )
    refusals = [e for e in audit_events(stack) if e.get("action") == "certificate.verify"]
    assert any("A7/revoked-key" in str(e.get("details", {}).get("reason")) for e in refusals)
