"""Red team: a compromised coordinator cannot revoke what is not a node's (issue 17; SPEC A6, F1, I "DoS",
"payment fraud").

The coordinator faces nodes and users; the one thing it may ask the issuer for besides a renewal is a
node's revocation. Were any serial revoked on its say-so, the attacker who owns it would revoke the
verifier's certificate (its report attestations fail: no escrow is ever released), the gateway's, its
peers', another organization's. Here the attacker holds the coordinator's socket to the real issuer
service and every certificate (they are public), and asks for each of those, in ``earlier`` behind an
honest node too, by bare serial, with a forged or tampered certificate. Each is refused with its status,
recorded as denied in the issuer's own audit log, and the CRL is what it was. Positive control: the
admin's revoke of a renewed node (through the coordinator, as deployed) revokes its current and its
earlier certificate, and both are refused at the handshake afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.issuer.revocation import RevocationRefusedError, RevocationRequest
from cyxwiz.issuer.service import RemoteIssuer
from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.certs import Role, load_certificate
from cyxwiz.pki.devpki import DevPKI
from cyxwiz.transport.tls import client_context
from tests._forged_certs import impostor, tampered
from tests.coordinator.conftest import auth
from tests.redteam._issuer import IssuerWorld, issuer_and_coordinator, renew_through_coordinator

Key = ed25519.Ed25519PrivateKey
NODES = ("node-a", "node-b", "node-c")


class World(IssuerWorld):
    def revocations(self) -> list[str]:
        """The issuer's own record of revocations: "success" per certificate revoked, "denied" per refusal."""
        return self.outcomes("certificate.revoke")

    def crl(self) -> set[int]:
        """The serials of the CRL the issuer signs now (what every listener would load)."""
        remote = RemoteIssuer(socket_path=self.issuer.socket_path)
        try:
            return {r.serial_number for r in x509.load_pem_x509_crl(remote.crl())}
        finally:
            remote.close()

    def ask(self, body: dict[str, Any]) -> httpx.Response:
        """POST /v1/revoke as the coordinator's process can: straight to the issuer's socket."""
        transport = httpx.HTTPTransport(uds=str(self.issuer.socket_path))
        with httpx.Client(transport=transport, base_url="http://issuer", timeout=30) as raw:
            return raw.post("/v1/revoke", json=body)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("revocation-scope")
    with issuer_and_coordinator(home, NODES) as (env, proc, audit_dir):
        yield World(env=env, issuer=proc, audit_dir=audit_dir)


def _pem(cert: x509.Certificate | Path) -> str:
    cert = load_certificate(cert) if isinstance(cert, Path) else cert
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _serial(path: Path) -> str:
    return format(load_certificate(path).serial_number, "x")


def _other_ca(p: DevPKI) -> x509.Certificate:
    """A worker "node-a" of another CA (the dev root: trusted by every listener, not this issuer's)."""
    return (
        CertificateAuthority.from_dir(p.root_ca_cert.parent)
        .issue(common_name="node-a", role=Role.WORKER)
        .certificate
    )


def _same_name(p: DevPKI, name: str) -> x509.Certificate:
    """Another worker certificate of this CA under ``name``: what a renewal leaves behind."""
    return p.issuing_ca().issue(common_name=name, role=Role.WORKER).certificate


Body = Callable[[DevPKI], dict[str, Any]]
REFUSED, MALFORMED = (403, "revocation-refused"), (422, "validation")
ATTACKS: dict[str, tuple[Body, tuple[int, str], str]] = {
    # name: (request body, (status, error code), field) — every rule "A6"
    "the verifier's certificate": (lambda p: {"certificate": _pem(p.verifier_cert)}, REFUSED, "certificate"),
    "the gateway's certificate": (lambda p: {"certificate": _pem(p.gateway_cert)}, REFUSED, "certificate"),
    "its own coordinator certificate": (
        lambda p: {"certificate": _pem(p.coordinator_cert)}, REFUSED, "certificate"
    ),
    "an admin (user) certificate": (lambda p: {"certificate": _pem(p.user_cert)}, REFUSED, "certificate"),
    "a worker certificate of another CA": (
        lambda p: {"certificate": _pem(_other_ca(p))}, REFUSED, "certificate"
    ),
    "a forgery naming this CA with the verifier's serial": (
        lambda p: {"certificate": _pem(impostor(
            load_certificate(p.ca_cert).subject, serial=load_certificate(p.verifier_cert).serial_number
        ))},
        REFUSED, "certificate",
    ),
    "a tampered node certificate": (
        lambda p: {"certificate": _pem(tampered(load_certificate(p.node_cert("node-a"))))}, REFUSED,
        "certificate",
    ),
    "another node's worker certificate in earlier": (
        lambda p: {"certificate": _pem(p.node_cert("node-a")), "earlier": [_pem(p.node_cert("node-b"))]},
        REFUSED, "earlier[0]",
    ),
    "the verifier's certificate in earlier": (
        lambda p: {"certificate": _pem(p.node_cert("node-a")), "earlier": [_pem(p.verifier_cert)]},
        REFUSED, "earlier[0]",
    ),
    "another node behind honest earlier ones": (
        lambda p: {
            "certificate": _pem(p.node_cert("node-a")),
            "earlier": [
                _pem(_same_name(p, "node-a")), _pem(p.node_cert("node-c")), _pem(_same_name(p, "node-a"))
            ],
        },
        REFUSED, "earlier[1]",
    ),
    "a bare serial": (
        lambda p: {"serial": _serial(p.verifier_cert), "reason": "keyCompromise"}, MALFORMED, "body"
    ),
    "a bare serial in earlier": (
        lambda p: {"certificate": _pem(p.node_cert("node-a")), "earlier": [_serial(p.verifier_cert)]},
        MALFORMED, "earlier[0]",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_coordinator_cannot_revoke_beyond_a_nodes_own_certificates(world: World, name: str) -> None:
    build, (status, code), field = ATTACKS[name]
    body = build(world.pki)
    before, audited = world.crl(), world.revocations()
    r = world.ask(body)
    error = r.json()["error"]
    assert (r.status_code, error["code"], error["field"], error["rule"]) == (status, code, field, "A6")
    assert world.revocations() == [*audited, "denied"]  # the issuer's own log says so
    assert world.crl() == before  # and nothing was revoked, not even the honest part of the request


def test_the_coordinators_client_gets_the_refusal_precisely(world: World) -> None:
    """What the coordinator's code sees: the issuer's class, field and rule, not a generic failure."""
    remote = RemoteIssuer(socket_path=world.issuer.socket_path)
    before = world.crl()
    try:
        with pytest.raises(RevocationRefusedError) as info:
            remote.revoke(RevocationRequest(certificate=load_certificate(world.pki.verifier_cert)))
    finally:
        remote.close()
    assert (info.value.field, info.value.rule) == (
        "certificate",
        "A6",
    ) and "only a worker" in info.value.message
    assert "certutil revoke" in info.value.message  # where an operator revokes it instead
    assert world.crl() == before


def test_an_honest_node_revocation_takes_its_current_and_earlier_certificates(
    world: World, tmp_path: Path
) -> None:
    env, pki = world.env, world.pki
    a = env.register("node-a")
    renewal = renew_through_coordinator(env, "node-a", a["session_token"], tmp_path)
    renewed, cert_path, key_path = renewal.answer, renewal.cert_path, renewal.key_path
    audited = world.revocations()
    admin = env.user_token("root", role="admin")
    with env.client() as c:
        r = c.post(
            f"/v1/admin/nodes/{a['node_id']}/revoke", json={"reason": "keyCompromise"}, headers=auth(admin)
        )
        assert r.status_code == 200, r.text
    current, earlier = load_certificate(cert_path), load_certificate(pki.node_cert("node-a"))
    assert {current.serial_number, earlier.serial_number} <= world.crl()
    assert world.revocations() == [*audited, "success", "success"]
    # Both of the node's keys are refused at the handshake now (the coordinator applied the issuer's CRL).
    ctx = client_context(trust_bundle=pki.bundle, cert=cert_path, key=key_path)
    with (
        pytest.raises(httpx.TransportError),
        httpx.Client(base_url=env.coord.url, verify=ctx, timeout=10) as c,
    ):
        c.post("/v1/nodes/heartbeat", json={}, headers=auth(renewed["session_token"]))
    with pytest.raises(httpx.TransportError), env.client("node-a") as c:
        c.post("/v1/nodes/heartbeat", json={}, headers=auth(a["session_token"]))
    # Another node is untouched (the revocation named only node-a's certificates).
    b = env.register("node-b")
    with env.client("node-b") as c:
        assert c.post("/v1/nodes/heartbeat", json={}, headers=auth(b["session_token"])).status_code == 200
