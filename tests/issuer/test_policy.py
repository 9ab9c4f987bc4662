"""What the issuer signs and what it refuses (issue 17; SPEC A1, A3, A6, A7, C2, F1, I).

The issuer is the only holder of the issuing CA key. Each attack gives it everything a compromised
coordinator has — every certificate (they are public), its own keys, any CSR — but no node's key; beside
each, the honest renewal succeeds. A refusal names its rule, is audited as denied, and nothing is signed.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cyxwiz.audit import MemorySink
from cyxwiz.audit.catalogue import Outcome
from cyxwiz.errors import CyxwizError, ValidationError
from cyxwiz.issuer.policy import (
    LINK_MAX_AGE,
    IssuanceRefusedError,
    NodeCertIssuer,
    RenewalRequest,
)
from cyxwiz.ledger.payout import RenewalLink, RenewalLinkError, SignedRenewalLink
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import Role, load_certificate, role_of
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id

Key = ed25519.Ed25519PrivateKey


@dataclass
class World:
    pki: DevPKI
    issuer: NodeCertIssuer
    audit: MemorySink

    def current(self, node: str = "node-a") -> tuple[x509.Certificate, Key]:
        key = load_private_key(self.pki.node_key(node))
        assert isinstance(key, Key)
        return load_certificate(self.pki.node_cert(node)), key

    def issued(self) -> int:
        return sum(1 for e in self.audit.of_action("certificate.issue") if e.outcome is Outcome.SUCCESS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return build_dev_pki(tmp_path_factory.mktemp("issuer") / "pki", nodes=("node-a", "node-b", "node-c"))


@pytest.fixture
def world(pki: DevPKI) -> World:
    audit = MemorySink()
    issuer = NodeCertIssuer.from_dir(pki.ca_dir, lifetime=dt.timedelta(hours=1), audit=audit)
    return World(pki=pki, issuer=issuer, audit=audit)


def csr_pem(key: object, cn: str) -> str:
    return create_csr(key, common_name=cn).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]


def renewal(
    cert: x509.Certificate, old: Key, *, new: Key | None = None, cn: str | None = None,
    link: SignedRenewalLink | None = None,
) -> RenewalRequest:  # fmt: skip
    """What an honest node sends, unless a part is swapped for the attacker's."""
    new = new or Key.generate()
    name = cn or str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    link = link or SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(new))
    return RenewalRequest.build(certificate=cert, csr_pem=csr_pem(new, name), link=link.to_dict())


def dated_link(old: Key, new: Key, at: dt.datetime) -> SignedRenewalLink:
    link = RenewalLink(
        old_peer_id=peer_id(old), new_peer_id=peer_id(new), issued_at=int(at.timestamp() * 1000)
    )
    return SignedRenewalLink(link=link, signature=base64.b64encode(old.sign(link.message())).decode())


def test_an_honest_renewal_gets_a_short_lived_worker_certificate_for_the_new_key(world: World) -> None:
    cert, old = world.current()
    new = Key.generate()
    renewed = world.issuer.renew(renewal(cert, old, new=new))
    renewed.verify_directly_issued_by(load_certificate(world.pki.ca_cert))
    assert renewed.subject == cert.subject and peer_id(renewed) == peer_id(new) != peer_id(cert)
    assert role_of(renewed) is Role.WORKER
    usages = renewed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a client, never a server
    left = renewed.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < left <= dt.timedelta(hours=1)
    assert world.issued() == 1


def test_a_csr_that_asks_for_another_role_still_gets_only_worker(world: World) -> None:
    cert, old = world.current()
    new = Key.generate()
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "node-a"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "verifier"),
    ])  # fmt: skip
    sans = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:cyxwiz:role:verifier")])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(sans, False)
        .sign(new, None)
    )
    link = SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(new))
    request = RenewalRequest.build(
        certificate=cert, csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(), link=link.to_dict()
    )
    renewed = world.issuer.renew(request)
    assert role_of(renewed) is Role.WORKER and renewed.subject == cert.subject


def _role_cert(pki: DevPKI, role: str) -> tuple[x509.Certificate, Key]:
    paths = {
        "verifier": (pki.verifier_cert, pki.verifier_key),
        "coordinator": (pki.coordinator_cert, pki.coordinator_key),
        "gateway": (pki.gateway_cert, pki.gateway_key),
        "user": (pki.user_cert, pki.user_key),
    }[role]
    key = load_private_key(paths[1])
    assert isinstance(key, Key)
    return load_certificate(paths[0]), key


Attack = Callable[[World], RenewalRequest]


def _another_name(w: World) -> RenewalRequest:
    cert, old = w.current()
    return renewal(cert, old, cn="node-b")  # node-a's key asks for node-b's name


def _link_by_new_key(w: World) -> RenewalRequest:
    cert, _old = w.current()
    new = Key.generate()  # the attacker's own key "vouches" for itself: it holds no node key
    forged = RenewalLink(old_peer_id=peer_id(cert), new_peer_id=peer_id(new), issued_at=1_700_000_000_000)
    link = SignedRenewalLink(link=forged, signature=base64.b64encode(new.sign(forged.message())).decode())
    return renewal(cert, _old, new=new, link=link)


def _link_to_other_key(w: World) -> RenewalRequest:
    cert, old = w.current()
    replayed = SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(Key.generate()))  # an honest link
    return renewal(cert, old, link=replayed)  # ... spent on the attacker's CSR


def _old_link(w: World) -> RenewalRequest:
    cert, old = w.current()
    new = Key.generate()
    stale = dated_link(old, new, dt.datetime.now(dt.UTC) - LINK_MAX_AGE - dt.timedelta(minutes=1))
    return renewal(cert, old, new=new, link=stale)


def _same_key(w: World) -> RenewalRequest:
    cert, old = w.current()
    return renewal(cert, old, new=old)


def _rsa_key(w: World) -> RenewalRequest:
    cert, old = w.current()
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = x509.CertificateSigningRequestBuilder().subject_name(cert.subject).sign(key, hashes.SHA256())
    link = SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(Key.generate()))
    return RenewalRequest.build(
        certificate=cert, csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(), link=link.to_dict()
    )


def _role(role: str) -> Attack:
    def attack(w: World) -> RenewalRequest:
        cert, key = _role_cert(w.pki, role)  # even with that certificate's own key
        return renewal(cert, key)

    return attack


def _revoked(w: World) -> RenewalRequest:
    cert, old = w.current("node-c")
    w.pki.revoke(w.pki.node_cert("node-c"))
    return renewal(cert, old)


def _expired(w: World) -> RenewalRequest:
    key = Key.generate()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    issued = w.pki.issuing_ca().issue(
        common_name="node-a", role=Role.WORKER, public_key=key.public_key(), days=1, not_before=start
    )
    return renewal(issued.certificate, key)


ATTACKS: dict[str, tuple[Attack, type[CyxwizError], str, str, str]] = {
    # name: (attack, error, rule, field, message fragment)
    "verifier role": (_role("verifier"), IssuanceRefusedError, "A1", "certificate", "only a worker"),
    "coordinator role": (_role("coordinator"), IssuanceRefusedError, "A1", "certificate", "only a worker"),
    "gateway role": (_role("gateway"), IssuanceRefusedError, "A1", "certificate", "only a worker"),
    "user (admin) role": (_role("user"), IssuanceRefusedError, "A1", "certificate", "only a worker"),
    "another node's name": (_another_name, IssuanceRefusedError, "C2", "csr", "keeps the certificate's name"),
    "link not by the old key": (_link_by_new_key, RenewalLinkError, "A7", "renewal_link", "not signed by"),
    "link to another key": (_link_to_other_key, RenewalLinkError, "A7", "renewal_link", "other keys"),
    "stale link": (_old_link, RenewalLinkError, "A7", "renewal_link.issued_at", "not from this renewal"),
    "same key": (_same_key, ValidationError, "A7", "csr", "needs a new key"),
    "not Ed25519": (_rsa_key, ValidationError, "A2", "csr", "Ed25519"),
    "revoked current": (_revoked, IssuanceRefusedError, "A6", "certificate", "revoked"),
    "expired current": (_expired, IssuanceRefusedError, "A3", "certificate", "not valid now"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_forgery_is_refused_precisely_and_nothing_is_signed(world: World, name: str) -> None:
    attack, error, rule, field, fragment = ATTACKS[name]
    request = attack(world)
    with pytest.raises(error) as info:
        world.issuer.renew(request)
    assert (info.value.rule, info.value.field) == (rule, field) and fragment in info.value.message
    assert world.issued() == 0
    [denied] = world.audit.of_action("certificate.issue")
    assert denied.outcome is Outcome.DENIED and info.value.code in str(denied.details)


def test_a_request_that_is_not_one_is_named(world: World) -> None:
    cert, old = world.current()
    good = renewal(cert, old).to_dict()
    for body, field in [
        ({**good, "role": "verifier"}, "body"),  # no field beyond the three
        ({**good, "csr": "not a csr"}, "csr"),
        ({**good, "certificate": "junk"}, "certificate"),
        ({**good, "renewal_link": None}, "renewal_link"),
    ]:
        with pytest.raises(ValidationError) as info:
            RenewalRequest.from_dict(body)
        assert info.value.field == field
    assert world.issuer.renew(RenewalRequest.from_dict(good)).subject == cert.subject  # positive control


def test_the_issuer_refuses_a_long_lifetime(pki: DevPKI) -> None:
    with pytest.raises(ValidationError) as info:
        NodeCertIssuer.from_dir(pki.ca_dir, lifetime=dt.timedelta(days=400))
    assert info.value.field == "lifetime" and info.value.rule == "A3"
