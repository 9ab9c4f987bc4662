"""A job in flight survives its node's certificate renewal (issues 18, 17; SPEC A7, A6, A5, F1).

Verification takes the node's certificates from the coordinator's records (each one it accepted at
registration or issued at renewal), never from the dev PKI directory. A proof signed before the renewal
and verified after it passes, and so does the same proof restated under the renewed certificate with the
old key's renewal link (the run stays bound to the key it was trained for, issue 17) — positive controls
beside each attack; a proof under another node's certificate, a revoked one, one that expired before the
proof arrived, or a restatement without the link, is refused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.issuer.policy import NodeCertIssuer, RenewalRequest
from cyxwiz.ledger.payout import SignedRenewalLink
from cyxwiz.pki.ca import CertificateAuthority, create_csr
from cyxwiz.pki.certs import fingerprint_sha256
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from cyxwiz.verification.proof import SignedProof, restate_proof
from cyxwiz.verification.report import VerificationReport
from cyxwiz.verification.verifier import Expectations, JobData, TrustStore, verify_job
from tasks import services
from tasks.coordinator_channel import SchedulerChannel
from tasks.verifier_service import assigned
from tests.verification import conftest as vc
from tests.verification.conftest import World


@dataclass
class Renewed:
    channel: SchedulerChannel
    node_id: str
    job_id: str
    old: x509.Certificate
    new: x509.Certificate
    new_key: ed25519.Ed25519PrivateKey
    other_id: str
    #: The old key's renewal link to the new key (what the agent sent with its renewal).
    link: SignedRenewalLink


@pytest.fixture
def renewed(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Renewed:
    """node-1 registered, given a job, then renewed (new key, new PeerID, one-hour certificate)."""
    store = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'coordinator.db'}")
    channel = SchedulerChannel(store=store, node_wallets={})
    monkeypatch.setattr(services, "control_channel", lambda: channel)
    ids = {}
    for name in ("node-1", "node-2"):
        cert = world.cert(name)
        ids[name] = store.register_node(
            peer_id=peer_id(cert), subject=cert.subject.rfc4514_string(),
            cert_serial=format(cert.serial_number, "x"), hardware={}, certificate=cert,
        ).node_id  # fmt: skip
    job = store.create_job(user_id="u", spec={"job_type": "model"}, duration_s=60)
    store.assign_job(job.job_id, ids["node-1"])
    key = ed25519.Ed25519PrivateKey.generate()
    csr = create_csr(key, common_name="node-1").public_bytes(serialization.Encoding.PEM).decode()
    issuer = NodeCertIssuer.from_dir(world.pki.ca_dir, lifetime=dt.timedelta(hours=1))
    link = SignedRenewalLink.sign(
        old_key=load_private_key(world.pki.node_key("node-1")), new_peer_id=peer_id(key)
    )
    new = issuer.renew(
        RenewalRequest.build(certificate=world.cert("node-1"), csr_pem=csr, link=link.to_dict())
    )
    store.renew_node(
        ids["node-1"], peer_id=peer_id(new), cert_serial=format(new.serial_number, "x"), certificate=new,
        renewal_link=link,
    )  # fmt: skip
    return Renewed(channel, ids["node-1"], job.job_id, world.cert("node-1"), new, key, ids["node-2"], link)


def _verify(
    world: World, proof: SignedProof, r: Renewed, *, received: dt.datetime, trust: TrustStore | None = None
) -> VerificationReport | None:
    """What the control plane's verification does: the certificate from the coordinator's records."""
    cert, peers = services.node_certificate(r.node_id, proof.proof.node_peer_id)
    if cert is None:
        return None
    return verify_job(
        proof=proof,
        node_certificate=cert,
        job=world.job,
        output_dir=world.honest_out,
        data=JobData(
            train=world.digits.train, holdout=world.digits.holdout, holdout_sha256=world.digits.holdout_sha256
        ),
        trust=trust or world.trust(),
        expect=Expectations(node_peer_ids=peers, token_jti="jti-1", received_at=received),
    )


def _sign_renewed(
    world: World, r: Renewed, *, links: tuple[SignedRenewalLink, ...] | None = None
) -> SignedProof:
    """What the agent submits after the renewal: the run's proof (signed under the dispatch certificate,
    trained for its PeerID) restated under the renewed certificate, with the old key's link to the new."""
    return restate_proof(
        world.sign(world.honest_out, node="node-1"),
        node_peer_id=peer_id(r.new),
        cert_fingerprint_sha256=fingerprint_sha256(r.new).hex(),
        links=[link.to_dict() for link in ((r.link,) if links is None else links)],
        private_key=r.new_key,
    )


def _check(report: VerificationReport, name: str) -> bool:
    return next(c.passed for c in report.checks if c.name == name)


def test_the_coordinator_keeps_every_certificate_of_the_node(renewed: Renewed) -> None:
    certs = renewed.channel.node_certificates(renewed.node_id)
    assert [c.peer_id for c in certs] == [peer_id(renewed.old), peer_id(renewed.new)]
    node = assigned(renewed.job_id, renewed.channel)
    assert node is not None and node.node_id == renewed.node_id
    assert node.peer_ids == {peer_id(renewed.old), peer_id(renewed.new)}  # the job's node, both keys
    other = [c.peer_id for c in renewed.channel.node_certificates(renewed.other_id)]
    assert not set(other) & node.peer_ids


def test_a_proof_signed_before_renewal_verifies_after_it(world: World, renewed: Renewed) -> None:
    proof = world.sign(world.honest_out, node="node-1")  # under the certificate of the dispatch
    report = _verify(world, proof, renewed, received=vc.T0 + dt.timedelta(seconds=10))
    assert report is not None and report.passed, (
        [c for c in report.checks if not c.passed] if report else None
    )
    # The agent restates it under its renewed certificate: the run is still the old key's (the proof names
    # it as the trainer), and the old key's signed link to the new one makes it the new key's to sign.
    restated = _sign_renewed(world, renewed)
    assert restated.proof.trainer() == peer_id(renewed.old) != restated.proof.node_peer_id
    report = _verify(world, restated, renewed, received=vc.T0 + dt.timedelta(seconds=10))
    assert report is not None and report.passed, report.to_markdown() if report else None
    assert "renewed into the signing key (1 signed links)" in report.check("trainer").reason
    # Without the link the coordinator's records (both PeerIDs are the node's) are not enough (F1).
    bare = _verify(
        world, _sign_renewed(world, renewed, links=()), renewed, received=vc.T0 + dt.timedelta(seconds=10)
    )
    assert bare is not None and not bare.passed and bare.failures[0].name == "trainer"
    assert "no chain of renewal links" in bare.failures[0].reason
    assert bare.check("training").passed is False and "not run" in bare.check("training").reason


def test_the_coordinators_links_count_by_their_signatures_only(world: World, renewed: Renewed) -> None:
    """A restated proof that lost its link passes with the link the coordinator kept at the renewal (A7):
    the verifier follows it for the old key's signature, and the same list with the link's signature
    swapped for another key's is refused — the coordinator's rows add no trust of their own."""
    received = vc.T0 + dt.timedelta(seconds=10)
    proof = _sign_renewed(world, renewed, links=())
    cert, peers = services.node_certificate(renewed.node_id, proof.proof.node_peer_id)
    assert cert is not None
    held = services.node_renewal_links(peers)
    assert held == (renewed.link.to_dict(),)

    def verify(links: tuple[object, ...]) -> VerificationReport:
        return verify_job(
            proof=proof,
            node_certificate=cert,
            job=world.job,
            output_dir=world.honest_out,
            data=JobData(
                train=world.digits.train,
                holdout=world.digits.holdout,
                holdout_sha256=world.digits.holdout_sha256,
            ),
            trust=world.trust(),
            expect=Expectations(
                node_peer_ids=peers, renewal_links=links, token_jti="jti-1", received_at=received
            ),
        )

    report = verify(held)
    assert report.passed, report.to_markdown()
    swapped = {**renewed.link.to_dict(), "signature": SignedRenewalLink.sign(
        old_key=renewed.new_key, new_peer_id=peer_id(renewed.new)).signature}  # fmt: skip
    refused = verify((swapped,))
    assert refused.failures[0].name == "trainer" and "not signed by the old key" in refused.failures[0].reason


def test_another_nodes_certificate_is_refused(world: World, renewed: Renewed) -> None:
    proof = world.sign(world.honest_out, node="node-2")  # a valid proof, by the wrong node
    assert services.node_certificate(renewed.node_id, proof.proof.node_peer_id)[0] is None
    assert _verify(world, proof, renewed, received=vc.T0 + dt.timedelta(seconds=10)) is None
    # Handed the other node's certificate anyway, the identity check still refuses it.
    _, peers = services.node_certificate(renewed.node_id, peer_id(renewed.old))
    received = vc.T0 + dt.timedelta(seconds=10)
    report = verify_job(
        proof=proof,
        node_certificate=world.cert("node-2"),
        job=world.job,
        output_dir=world.honest_out,
        data=JobData(train=world.digits.train, holdout=world.digits.holdout),
        trust=world.trust(),
        expect=Expectations(node_peer_ids=peers, token_jti="jti-1", received_at=received),
    )
    assert not report.passed and not _check(report, "identity")


def test_a_certificate_revoked_before_the_proof_arrived_is_refused(world: World, renewed: Renewed) -> None:
    received = vc.T0 + dt.timedelta(seconds=10)
    proof = world.sign(world.honest_out, node="node-1")
    ca = CertificateAuthority.from_dir(world.pki.ca_dir)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(received - dt.timedelta(minutes=1))
        .next_update(received + dt.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(renewed.old.serial_number)
            .revocation_date(received - dt.timedelta(seconds=5))
            .build()
        )
    )
    crl = builder.sign(ca.private_key, None)
    base = world.trust()
    revoked = TrustStore(trusted=base.trusted, crls=[crl])
    report = _verify(world, proof, renewed, received=received, trust=revoked)
    assert report is not None and not report.passed and not _check(report, "certificate")
    # Positive control: the same CRL does not touch the renewed certificate, and the old key's run,
    # restated under it with the old key's link (signed before the revocation), passes in full.
    report = _verify(world, _sign_renewed(world, renewed), renewed, received=received, trust=revoked)
    assert report is not None and report.passed, report.to_markdown() if report else None


def test_a_certificate_expired_before_the_proof_arrived_is_refused(world: World, renewed: Renewed) -> None:
    proof = _sign_renewed(world, renewed)
    late = renewed.new.not_valid_after_utc + dt.timedelta(minutes=10)  # past the clock-skew allowance
    report = _verify(world, proof, renewed, received=late)
    assert report is not None and not report.passed and not _check(report, "certificate")


def test_the_referee_and_arbiter_evidence_follows_the_same_links(
    world: World, renewed: Renewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tasks.referee._evidence`` (the referee's and the arbiter's replay input) rebuilds the run for the
    proof's trainer only along signed links: the node's restated proof is its old key's run; a key the
    coordinator listed under the node without a link, naming that old key as its trainer, is refused."""
    import json

    from cyxwiz.storage import layout
    from cyxwiz.storage.local import LocalObjectStore
    from cyxwiz.verification.proof import CompletionProof, sign_proof
    from tasks.referee import _evidence

    objects = LocalObjectStore(root=tmp_path / "objects", master_key=None)
    monkeypatch.setattr(services, "store", lambda: objects)
    for path in world.honest_out.rglob("*"):
        if path.is_file():
            objects.put_file(
                layout.job_output(renewed.job_id, path.relative_to(world.honest_out).as_posix()), path
            )
    store = renewed.channel.store
    # The run's proof for this job id, signed by the old key (the dispatch's), restated under the new one.
    old = world.sign(world.honest_out, node="node-1").proof.model_copy(update={"job_id": renewed.job_id})
    signed = restate_proof(
        sign_proof(old, load_private_key(world.pki.node_key("node-1"))),
        node_peer_id=peer_id(renewed.new),
        cert_fingerprint_sha256=fingerprint_sha256(renewed.new).hex(),
        links=[renewed.link.to_dict()],
        private_key=renewed.new_key,
    )
    store.update_job(renewed.job_id, proof=json.loads(signed.to_json()))
    evidence, why = _evidence(renewed.job_id, peer_id(renewed.old), tmp_path / "honest")
    assert evidence is not None, why
    assert (evidence.trainer, evidence.signer) == (peer_id(renewed.old), peer_id(renewed.new))
    # A colluding key C, certified by the CA and listed by the coordinator under node-1 with no link.
    c_key = ed25519.Ed25519PrivateKey.generate()
    csr = create_csr(c_key, common_name="node-2").public_bytes(serialization.Encoding.PEM).decode()
    c_link = SignedRenewalLink.sign(
        old_key=load_private_key(world.pki.node_key("node-2")), new_peer_id=peer_id(c_key)
    )
    c_cert = NodeCertIssuer.from_dir(world.pki.ca_dir, lifetime=dt.timedelta(hours=1)).renew(
        RenewalRequest.build(certificate=world.cert("node-2"), csr_pem=csr, link=c_link.to_dict())
    )
    store.renew_node(renewed.node_id, peer_id=peer_id(c_cert), cert_serial=format(c_cert.serial_number, "x"),
                     certificate=c_cert)  # fmt: skip
    forged = _link_forged_by(c_key, old=peer_id(renewed.old), new=peer_id(c_cert))
    claim = CompletionProof.model_validate({
        **old.model_dump(), "node_peer_id": peer_id(c_cert),
        "cert_fingerprint_sha256": fingerprint_sha256(c_cert).hex(), "trainer_peer_id": peer_id(renewed.old),
        "renewal_links": [forged],
    })  # fmt: skip
    store.update_job(renewed.job_id, proof=json.loads(sign_proof(claim, c_key).to_json()))
    evidence, why = _evidence(renewed.job_id, peer_id(renewed.old), tmp_path / "colluder")
    assert evidence is None and why is not None and "not signed by the old key" in why


def _link_forged_by(key: ed25519.Ed25519PrivateKey, *, old: str, new: str) -> dict[str, object]:
    """A link "old -> new" signed by ``key``, which is not ``old``'s key."""
    doc = SignedRenewalLink.sign(old_key=key, new_peer_id=new).to_dict()
    doc["link"]["old_peer_id"] = old
    return doc
