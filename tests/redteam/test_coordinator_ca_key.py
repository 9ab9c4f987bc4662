"""Red team: the internet-facing coordinator holds no CA key and cannot mint (issue 17; SPEC A1, A3, A6, A7,
F1, I "payment fraud").

With the issuing CA's key a compromised coordinator could mint a ``verifier`` certificate whose signed
"pass" releases escrow, another node's certificate, an admin's. Now the key lives only in the issuer
service (its own process, a 0600 socket). The attacker here owns the coordinator outright — its socket to
the issuer, every certificate, its own key, even a node key where that is the point — and asks the
issuer directly: a verifier, coordinator or admin certificate, another node's name, a CSR without the old
key's link, a revoked or the same key. Each refusal is precise and nothing is signed (the issuer's own
audit log says so). Positive control: an honest node renews through coordinator -> issuer and its new
certificate works on mTLS; the admin's revoke (the one thing the coordinator may ask) cuts it off.
"""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.coordinator.config import CoordinatorConfig
from cyxwiz.coordinator.service import build_coordinator
from cyxwiz.errors import ConfigError, CyxwizError, ValidationError
from cyxwiz.issuer.policy import IssuanceRefusedError, RenewalRequest
from cyxwiz.issuer.revocation import RevocationRequest
from cyxwiz.issuer.service import RemoteIssuer
from cyxwiz.ledger.payout import RenewalLink, RenewalLinkError, SignedRenewalLink
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import DevPKI
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from cyxwiz.transport.tls import client_context
from tests.coordinator.conftest import auth
from tests.redteam._issuer import IssuerWorld, issuer_and_coordinator, node_key, renew_through_coordinator

Key = ed25519.Ed25519PrivateKey
NODES = ("node-a", "node-b", "node-c")


World = IssuerWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("no-ca-key")
    with issuer_and_coordinator(home, NODES) as (env, proc, audit_dir):
        yield World(env=env, issuer=proc, audit_dir=audit_dir)


def _encodings(raw: bytes) -> list[bytes]:
    return [
        raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="),
    ]  # fmt: skip


def test_the_coordinator_holds_no_ca_key_anywhere(world: World, tmp_path: Path) -> None:
    ca_key = load_private_key(world.pki.ca_key)
    assert isinstance(ca_key, Key)
    raw = ca_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    # Its state directory (database, token key ring) holds the CA key in no encoding.
    state = world.env.pki.root.parent / "state"
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files, "the coordinator's state dir is where the test looks"
    for path in files:
        data = path.read_bytes()
        assert not any(form in data for form in _encodings(raw)), path
    # What renews and revokes in it is a socket client, no key in its attributes.
    ctx = world.env.coord.app.app.state.coordinator  # type: ignore[attr-defined]
    assert isinstance(ctx.renewer, RemoteIssuer) and ctx.revoker.issuer is ctx.renewer
    assert not any(isinstance(v, Key) for v in vars(ctx.renewer).values())
    # Nor can it be configured with one: the production config, the systemd env and the wiring refuse it.
    with pytest.raises(ConfigError) as info:
        config = tmp_path / "coordinator.json"
        config.write_text(json.dumps({"ca_dir": str(world.pki.ca_dir)}))
        CoordinatorConfig.from_file(config)
    assert (info.value.field, info.value.rule) == ("ca_dir", "A7")
    from infra.serve import build_production_coordinator

    with pytest.raises(ConfigError) as info:
        build_production_coordinator({"CYXWIZ_CA_DIR": str(world.pki.ca_dir)})
    assert (info.value.field, info.value.rule) == ("CYXWIZ_CA_DIR", "A7")
    assert "ca_dir" not in inspect.signature(build_coordinator).parameters


def _ask(cert: x509.Certificate, *, cn: str, new: Key, link: SignedRenewalLink) -> RenewalRequest:
    csr = create_csr(new, common_name=cn).public_bytes(serialization.Encoding.PEM).decode()
    return RenewalRequest.build(certificate=cert, csr_pem=csr, link=link.to_dict())


def _self_linked(cert: x509.Certificate, cn: str) -> RenewalRequest:
    """The attacker's own new key, and a "link" it signs itself: it holds no node key."""
    new = Key.generate()
    body = RenewalLink(old_peer_id=peer_id(cert), new_peer_id=peer_id(new), issued_at=1_764_000_000_000)
    signature = base64.b64encode(new.sign(body.message())).decode()
    return _ask(cert, cn=cn, new=new, link=SignedRenewalLink(link=body, signature=signature))


def _with_key(
    cert_path: Path, key_path: Path, *, cn: str | None = None, new: Key | None = None
) -> RenewalRequest:
    """Worst case: the attacker even holds that certificate's key (the coordinator's own; a stolen one)."""
    cert, old = load_certificate(cert_path), node_key(key_path)
    new = new or Key.generate()
    name = cn or str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
    return _ask(cert, cn=name, new=new, link=SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(new)))


Attack = Callable[[DevPKI], RenewalRequest]
ONLY_WORKER = "only a worker"
ATTACKS: dict[str, tuple[Attack, type[CyxwizError], str, str]] = {
    # name: (attack, error, rule, message fragment)
    "a verifier certificate": (
        lambda p: _with_key(p.verifier_cert, p.verifier_key), IssuanceRefusedError, "A1", ONLY_WORKER
    ),
    "its own coordinator certificate": (
        lambda p: _with_key(p.coordinator_cert, p.coordinator_key), IssuanceRefusedError, "A1", ONLY_WORKER
    ),
    "an admin (user) certificate": (
        lambda p: _with_key(p.user_cert, p.user_key), IssuanceRefusedError, "A1", ONLY_WORKER
    ),
    "another node's name": (
        lambda p: _self_linked(load_certificate(p.node_cert("node-a")), "node-b"), IssuanceRefusedError, "C2",
        "keeps the certificate's name",
    ),
    "a node's name, no old-key link": (
        lambda p: _self_linked(load_certificate(p.node_cert("node-a")), "node-a"), RenewalLinkError, "A7",
        "not signed by the old key",
    ),
    "the same key again": (
        lambda p: _with_key(p.node_cert("node-a"), p.node_key("node-a"), new=node_key(p.node_key("node-a"))),
        ValidationError, "A7", "needs a new key",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_compromised_coordinator_cannot_mint(world: World, name: str) -> None:
    attack, error, rule, fragment = ATTACKS[name]
    before = world.outcomes("certificate.issue")
    remote = RemoteIssuer(socket_path=world.issuer.socket_path)  # the coordinator's own way in
    try:
        with pytest.raises(error) as info:
            remote.renew(attack(world.pki))
    finally:
        remote.close()
    assert info.value.rule == rule and fragment in info.value.message
    assert world.outcomes("certificate.issue") == [*before, "denied"]  # refused, and nothing signed


def test_a_revoked_certificate_is_not_renewed_even_with_its_key(world: World) -> None:
    pki = world.pki
    before = world.outcomes("certificate.issue")
    current = load_certificate(pki.node_cert("node-c"))
    remote = RemoteIssuer(socket_path=world.issuer.socket_path)
    try:
        remote.revoke(RevocationRequest(certificate=current, reason="keyCompromise"))  # what it may ask
        with pytest.raises(IssuanceRefusedError) as info:
            remote.renew(_with_key(pki.node_cert("node-c"), pki.node_key("node-c")))
    finally:
        remote.close()
    assert (info.value.rule, info.value.field) == ("A6", "certificate") and "revoked" in info.value.message
    assert world.outcomes("certificate.issue") == [*before, "denied"]


def test_an_honest_renewal_through_the_coordinator_works_on_mtls(world: World, tmp_path: Path) -> None:
    env, pki = world.env, world.pki
    a = env.register("node-a")
    before = world.outcomes("certificate.issue")
    renewal = renew_through_coordinator(env, "node-a", a["session_token"], tmp_path)
    renewed, new, cert_path, key_path = renewal.answer, renewal.key, renewal.cert_path, renewal.key_path
    # the issuer signed it, the coordinator only forwarded
    assert world.outcomes("certificate.issue") == [*before, "success"]
    ctx = client_context(trust_bundle=pki.bundle, cert=cert_path, key=key_path)
    with httpx.Client(base_url=env.coord.url, verify=ctx, timeout=10) as c:
        hb = c.post("/v1/nodes/heartbeat", json={}, headers=auth(renewed["session_token"]))
        assert hb.status_code == 200 and hb.json()["node_id"] == a["node_id"]
    # A refusal through the coordinator is the issuer's own, precisely: another name (403, field csr).
    other = create_csr(Key.generate(), common_name="node-b").public_bytes(serialization.Encoding.PEM).decode()
    with httpx.Client(base_url=env.coord.url, verify=ctx, timeout=10) as c:
        bad = SignedRenewalLink.sign(old_key=new, new_peer_id=peer_id(Key.generate()))
        r = c.post(
            "/v1/nodes/renew", json={"csr": other, "renewal_link": bad.to_dict()},
            headers=auth(renewed["session_token"]),
        )  # fmt: skip
        assert r.status_code in (403, 422) and r.json()["field"] in ("csr", "renewal_link")
    # The admin's revoke: the issuer signs the CRL, the coordinator applies it, the new certificate is out.
    admin = env.user_token("root", role="admin")
    with env.client() as c:
        r = c.post(
            f"/v1/admin/nodes/{a['node_id']}/revoke", json={"reason": "keyCompromise"}, headers=auth(admin)
        )
        assert r.status_code == 200, r.text
    with (
        pytest.raises(httpx.TransportError),
        httpx.Client(base_url=env.coord.url, verify=ctx, timeout=10) as c,
    ):
        c.post("/v1/nodes/heartbeat", json={}, headers=auth(renewed["session_token"]))


#: What runs the coordinator, the gateway, the control worker's flows and the verifier: none loads a CA key.
NO_CA_KEY = ("cyxwiz/coordinator", "cyxwiz/gateway", "cyxwiz/ledger", "cyxwiz/verification", "tasks", "flows",
             "agents", "blocks", "infra/serve.py", "infra/control_worker.py")  # fmt: skip


def test_no_process_but_the_issuer_loads_a_ca_key() -> None:
    """The control worker holds the ledger's keys: with the CA key too it could mint a verifier and move
    funds alone (issue 17). Its CRL refresh asks the issuer service (tests/flows/test_maintenance.py)."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for name in NO_CA_KEY:
        path = root / name
        for source in [path] if path.is_file() else sorted(path.rglob("*.py")):
            text = source.read_text(encoding="utf-8")
            found += [
                f"{source.relative_to(root)}: {w}"
                for w in ("CertificateAuthority", "issuing_ca(")
                if w in text
            ]
    assert not found, found
    issuer_source = (root / "cyxwiz" / "issuer" / "policy.py").read_text(encoding="utf-8")
    assert "CertificateAuthority.from_dir" in issuer_source  # positive control: the scan finds a loader
