"""What the issuer revokes when the coordinator asks (issue 17; SPEC A6, F1, I "DoS", "payment fraud").

Over its socket the issuer revokes a node's worker certificate it issued, and that node's earlier ones
under the same name; nothing else. Each attack hands it what a compromised coordinator holds (every
certificate: they are public) and asks for more: the refusal is precise, audited as denied, and the
revocation database is as it was — also when one bad certificate hides among good ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cyxwiz.audit import MemorySink
from cyxwiz.audit.catalogue import Outcome
from cyxwiz.errors import ConflictError, ValidationError
from cyxwiz.issuer.policy import NodeCertIssuer
from cyxwiz.issuer.revocation import MAX_EARLIER, RevocationRefusedError, RevocationRequest
from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.certs import Role, load_certificate
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from tests._forged_certs import impostor, tampered


@dataclass
class World:
    pki: DevPKI
    issuer: NodeCertIssuer
    audit: MemorySink

    def cert(self, path: Path) -> x509.Certificate:
        return load_certificate(path)

    def node(self, name: str) -> x509.Certificate:
        return load_certificate(self.pki.node_cert(name))

    def renewed(self, name: str) -> x509.Certificate:
        """Another worker certificate of this CA under ``name``: what a renewal leaves behind."""
        return self.pki.issuing_ca().issue(common_name=name, role=Role.WORKER).certificate

    def revoked(self) -> set[int]:
        return {r.serial for r in self.issuer.ca.revocations()}

    def outcomes(self) -> list[Outcome]:
        return [e.outcome for e in self.audit.of_action("certificate.revoke")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return build_dev_pki(tmp_path_factory.mktemp("revoke") / "pki", nodes=("node-a", "node-b", "node-c"))


@pytest.fixture
def world(pki: DevPKI) -> World:
    audit = MemorySink()
    return World(pki=pki, issuer=NodeCertIssuer.from_dir(pki.ca_dir, audit=audit), audit=audit)


def _other_ca(w: World) -> x509.Certificate:
    # The dev root: a CA every listener trusts, but not this issuer's: it revokes its own certificates.
    root = CertificateAuthority.from_dir(w.pki.root_ca_cert.parent)
    return root.issue(common_name="node-a", role=Role.WORKER).certificate


Ask = Callable[[World], RevocationRequest]
NOT_OURS, NOT_WORKER, NOT_SAME = "not issued by this CA", "only a worker", "node's own name"
ATTACKS: dict[str, tuple[Ask, str, str]] = {
    # name: (request, field, message fragment) — each a RevocationRefusedError, rule A6
    "the verifier's certificate": (
        lambda w: RevocationRequest(certificate=w.cert(w.pki.verifier_cert)), "certificate", NOT_WORKER
    ),
    "the gateway's certificate": (
        lambda w: RevocationRequest(certificate=w.cert(w.pki.gateway_cert)), "certificate", NOT_WORKER
    ),
    "the coordinator's certificate": (
        lambda w: RevocationRequest(certificate=w.cert(w.pki.coordinator_cert)), "certificate", NOT_WORKER
    ),
    "a user's certificate": (
        lambda w: RevocationRequest(certificate=w.cert(w.pki.user_cert)), "certificate", NOT_WORKER
    ),
    "the issuing CA's own certificate": (
        lambda w: RevocationRequest(certificate=w.cert(w.pki.ca_cert)), "certificate", NOT_OURS
    ),
    "a worker of another CA": (
        lambda w: RevocationRequest(certificate=_other_ca(w)), "certificate", NOT_OURS
    ),
    "an impostor with the verifier's serial": (
        lambda w: RevocationRequest(
            certificate=impostor(
                w.issuer.ca.certificate.subject, serial=w.cert(w.pki.verifier_cert).serial_number
            )
        ),
        "certificate", NOT_OURS,
    ),
    "a tampered node certificate": (
        lambda w: RevocationRequest(certificate=tampered(w.node("node-a"))), "certificate", NOT_OURS
    ),
    "another node smuggled in earlier": (
        lambda w: RevocationRequest(certificate=w.node("node-a"), earlier=(w.node("node-b"),)),
        "earlier[0]", NOT_SAME,
    ),
    "the verifier smuggled in earlier": (
        lambda w: RevocationRequest(certificate=w.node("node-a"), earlier=(w.cert(w.pki.verifier_cert),)),
        "earlier[0]", NOT_WORKER,
    ),
    "one bad among good earlier ones": (
        lambda w: RevocationRequest(
            certificate=w.node("node-a"),
            earlier=(w.renewed("node-a"), w.renewed("node-a"), w.node("node-c"), w.renewed("node-a")),
        ),
        "earlier[2]", NOT_SAME,
    ),
    "a tampered earlier one": (
        lambda w: RevocationRequest(certificate=w.node("node-a"), earlier=(tampered(w.renewed("node-a")),)),
        "earlier[0]", NOT_OURS,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_revocation_beyond_a_nodes_own_worker_certificates_is_refused(world: World, name: str) -> None:
    ask, field, fragment = ATTACKS[name]
    request = ask(world)
    before, crl = world.revoked(), world.issuer.ca.crl_path.read_bytes()
    with pytest.raises(RevocationRefusedError) as info:
        world.issuer.revoke(request)
    assert (info.value.rule, info.value.field) == ("A6", field) and fragment in info.value.message
    assert world.revoked() == before and world.issuer.ca.crl_path.read_bytes() == crl  # nothing revoked
    [denied] = world.audit.of_action("certificate.revoke")
    assert denied.outcome is Outcome.DENIED and "revocation-refused" in str(denied.details)


def test_a_node_and_its_earlier_certificates_are_revoked_in_one_crl(world: World) -> None:
    current = world.node("node-b")
    earlier = [world.renewed("node-b"), world.renewed("node-b")]
    world.issuer.ca.revoke(earlier[1], reason="superseded")  # already revoked: left out, not refused
    request = RevocationRequest(
        certificate=current, reason="keyCompromise", earlier=(earlier[0], earlier[1], earlier[0])
    )
    crl = x509.load_pem_x509_crl(world.issuer.revoke(request))
    assert crl.is_signature_valid(world.issuer.ca.certificate.public_key())  # type: ignore[arg-type]
    assert {current.serial_number, *(c.serial_number for c in earlier)} <= {r.serial_number for r in crl}
    assert [e.resource for e in world.audit.of_action("certificate.revoke")] == [
        f"certificate:{current.serial_number:x}", f"certificate:{earlier[0].serial_number:x}",
    ]  # fmt: skip
    assert world.outcomes() == [Outcome.SUCCESS, Outcome.SUCCESS]
    # The same request again: everything in it is revoked already, so it is named (and audited), not
    # silently passed, and nothing changes.
    before, crl_file = world.revoked(), world.issuer.ca.crl_path.read_bytes()
    with pytest.raises(ConflictError) as info:
        world.issuer.revoke(request)
    assert (info.value.field, info.value.rule) == ("certificate", "A6") and world.revoked() == before
    assert world.issuer.ca.crl_path.read_bytes() == crl_file
    assert world.outcomes()[-1] is Outcome.DENIED


def test_a_repeat_request_finishes_a_revocation_left_half_done(world: World) -> None:
    """The current certificate was revoked (by hand, or the issuer stopped mid-way), its earlier ones not:
    the coordinator's repeat revokes those, and only those (A6)."""
    current = world.renewed("node-d")  # its own node: the CA directory is shared by this module's tests
    earlier = (world.renewed("node-d"), world.renewed("node-d"))
    world.issuer.ca.revoke(current, reason="keyCompromise")
    before = world.revoked()
    assert current.serial_number in before and not {c.serial_number for c in earlier} & before
    crl = x509.load_pem_x509_crl(world.issuer.revoke(RevocationRequest(certificate=current, earlier=earlier)))
    assert world.revoked() == before | {c.serial_number for c in earlier}
    assert {c.serial_number for c in earlier} <= {r.serial_number for r in crl}
    assert [e.resource for e in world.audit.of_action("certificate.revoke")] == [
        f"certificate:{c.serial_number:x}" for c in earlier
    ]
    assert world.outcomes() == [Outcome.SUCCESS, Outcome.SUCCESS]


def test_a_request_that_names_no_certificate_is_refused_and_audited(world: World) -> None:
    pem = world.node("node-c").public_bytes(Encoding.PEM).decode()
    for body, field in [
        ({"serial": "ab"}, "body"),  # a bare serial: the CA keeps no index to check it against
        ({"serial": "ab", "certificate": pem}, "body"),
        ({"certificate": "ab"}, "certificate"),
        ({"certificate": pem, "earlier": ["ab"]}, "earlier[0]"),
        ({"certificate": pem, "earlier": [pem] * (MAX_EARLIER + 1)}, "earlier"),
        ({"certificate": pem, "reason": "x" * 100}, "reason"),
    ]:
        with pytest.raises(ValidationError) as info:
            world.issuer.revocation_request(body)
        assert (info.value.field, info.value.rule) == (field, "A6")
    assert world.outcomes() == [Outcome.DENIED] * 6
    request = world.issuer.revocation_request({"certificate": pem})  # positive control
    assert request == RevocationRequest.from_dict(request.to_dict())
