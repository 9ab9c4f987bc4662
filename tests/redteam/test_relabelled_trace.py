"""A node is never paid for another node's run (issue 17; SPEC F1, A5, threat I "payment fraud").

The attacker holds the coordinator: it draws the per-job secret and writes the assignment. It lets the
honest node H (dev PKI ``node-1``) train the job, then rewrites the assignment to a colluding node C
(``node-2``, a genuine certificate of the same CA), which signs H's outputs as its own completion proof
with its own key. The run seed mixes in the PeerID of the node that trains (the node takes it from its
own certificate) and the verifier rebuilds the run for the key that signed the proof, so:

- C re-signing H's outputs fails the data-order check (H's batch order is not C's), and a careful C that
  re-chains the commitments with its own order fails the endpoints (step 0 is H's initialisation);
- C training the job itself for H's PeerID (the coordinator told it H's id) gains nothing: the verifier
  takes the PeerID from C's signature; a job document cannot carry a trainer at all;
- the verdict is ``fraud`` and the ledger (LiteSVM behind JSON-RPC) refuses the release: C's wallet gets
  nothing and the escrow stays locked.

A node renews its certificate (a new key, a new PeerID) at half-life, so its run may be signed by a key
it was not trained for: the proof then names its trainer and carries the renewal links from it, each
signed by the older key (A7). Only those signatures make the signer the trainer's successor — never the
coordinator's list of the node's PeerIDs — so C cannot claim H's run as a renewal of H's: a link H's key
did not sign, a chain with a gap, a link from another node's key, or no link at all (the coordinator
listing C's PeerID under H's node) is refused by the ``trainer`` check and nothing is paid.

Positive controls: H's own proof passes and H is paid; H's run restated under H's renewed key with H's
link passes and H is paid; C's own run, signed by C, passes. Real training (the runtime's CLI, the node's
own identity code), the real verifier and ledger; only the coordinator's rewrite is played by the test.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.errors import ValidationError, VerificationError
from cyxwiz.ledger.attestation import ReportVerdictError
from cyxwiz.ledger.store import EscrowState
from cyxwiz.training import engine
from cyxwiz.training.data import load_dataset
from cyxwiz.training.runtime import main as runtime_main
from cyxwiz.training.spec import TrainingJob, parse_training_job
from cyxwiz.verification import trace
from cyxwiz.verification.commitments import read_commitments
from cyxwiz.verification.report import VerificationReport
from tasks.node import NodeIdentity, TrainingRun, sign_completion_proof
from tasks.verifier_service import verdict_of
from tests._forgery import rechain
from tests.ledger.conftest import USER_FUNDS
from tests.ledger.conftest import World as MoneyWorld
from tests.verification.conftest import World, reference_job, restate_metrics, world, write_job

__all__ = ["world"]

AMOUNT = 10_000
H, C = "node-1", "node-2"


@dataclass
class Job:
    world: World
    root: Path
    doc: dict[str, Any]
    job: TrainingJob
    job_path: Path
    h_out: Path

    def identity(self, node: str) -> NodeIdentity:
        pki = self.world.pki
        return NodeIdentity(cert_path=pki.node_cert(node), key_path=pki.node_key(node))

    def train(self, name: str, *, trainer: str) -> Path:
        """The runtime's CLI, as the sandbox runs it, for the PeerID ``trainer``."""
        out = self.root / name
        argv = ["--job", str(self.job_path), "--data", str(self.world.digits.train), "--output", str(out),
                "--device", "cpu", "--trainer", trainer]  # fmt: skip
        assert runtime_main(argv) == 0
        return out

    def copy(self, name: str) -> Path:
        import shutil

        target = self.root / name
        shutil.copytree(self.h_out, target)
        return target

    def verify(self, out: Path, *, signer: str, assigned: str) -> VerificationReport:
        """The verifier with the coordinator's (rewritten) assignment; the proof signed by ``signer``."""
        return self.world.verify(out, self.world.sign(out, job=self.job, node=signer), job=self.job,
                                 node=signer, assigned=assigned)  # fmt: skip


@pytest.fixture(scope="module")
def job(world: World, tmp_path_factory: pytest.TempPathFactory) -> Job:
    """A small bound job (82 steps) that H trains with the PeerID of its own certificate."""
    root = tmp_path_factory.mktemp("relabel")
    doc = reference_job(world.digits, job_id="relabel-1", epochs=2)
    job_path, parsed = write_job(root / "job", doc)  # restate_metrics finds it at <outputs>/../job/job.json
    made = Job(world=world, root=root, doc=doc, job=parsed, job_path=job_path, h_out=root / "h")
    made.train("h", trainer=made.identity(H).peer_id())
    return made


def _failed(report: VerificationReport, check: str, *words: str) -> None:
    """Refused by ``check`` first, with the signer's certificate, signature and binding all good (the
    proof really is C's: only the run's binding to its trainer tells)."""
    assert not report.passed
    first = report.failures[0]
    assert first.name == check, report.to_markdown()
    for word in words:
        assert word in first.reason, first.reason
    assert all(
        report.check(n).passed for n in ("certificate", "signature", "identity", "binding", "artifacts")
    )


def _release(money: MoneyWorld, report: VerificationReport, *, job_id: str, node: str, peer: str) -> Any:
    """The settlement: an escrow assigned to ``peer``'s wallet, released with the verifier's attestation
    of ``report`` (its verdict as the verifier service derives it)."""
    wallet = money.node if node == H else money.other_node
    ledger = money.ledger()
    ledger.create(job_id=job_id, user=money.user, amount=AMOUNT)
    ledger.assign(job_id=job_id, node_wallet=wallet.pubkey(), node_peer_id=peer)
    verdict = verdict_of(json.loads(report.to_json()))
    attestation = money.attest(job_id, verdict=verdict, node_peer_id=peer, node_wallet=str(wallet.pubkey()))  # type: ignore[arg-type]
    return ledger.release(job_id=job_id, node_wallet=wallet.pubkey(), report=attestation)


def test_h_own_proof_passes_and_h_is_paid(job: Job, money_world: MoneyWorld) -> None:
    report = job.verify(job.h_out, signer=H, assigned=H)
    assert report.passed, report.to_markdown()
    record = _release(money_world, report, job_id="relabel-h", node=H, peer=job.world.peer(H))
    assert record.state is EscrowState.RELEASED and money_world.token(money_world.node) == AMOUNT


def test_c_resigning_h_outputs_fails_the_data_order_and_nothing_is_paid(
    job: Job, money_world: MoneyWorld
) -> None:
    out = job.copy("c-resigned")  # H's outputs, untouched; the coordinator now names C
    report = job.verify(out, signer=C, assigned=C)
    _failed(report, "commitments", "data order", "PeerID")
    # The endpoints say the same on their own: step 0 is H's initialisation, not C's.
    data = load_dataset(job.world.digits.train, sha256=None, input_shape=(64,), input_dtype="float32",
                        num_classes=10)  # fmt: skip
    commitments = read_commitments(out / "commitments.json")
    schemas = trace.StateSchemas.of(job.job, data, trainer=job.world.peer(C))
    ends = trace.check_endpoints(job.job, data, out, commitments, schemas, trainer=job.world.peer(C))
    assert not ends.passed and "initialisation" in ends.reason
    assert verdict_of(json.loads(report.to_json())) == "fraud"  # a signed lie: C's stake is slashed
    with pytest.raises(ReportVerdictError, match="verdict"):
        _release(money_world, report, job_id="relabel-c", node=C, peer=job.world.peer(C))
    ledger = money_world.ledger()
    assert ledger.status(job_id="relabel-c").state is EscrowState.LOCKED
    assert (money_world.token(money_world.other_node), ledger.onchain_amount(job_id="relabel-c")) == (
        0,
        AMOUNT,
    )
    assert money_world.token(money_world.user) == USER_FUNDS - AMOUNT


def test_c_rechaining_h_outputs_with_its_own_data_order_fails_the_endpoints(job: Job) -> None:
    out = job.copy("c-rechained")
    data = load_dataset(job.world.digits.train, sha256=None, input_shape=(64,), input_dtype="float32",
                        num_classes=10)  # fmt: skip
    mine = engine.new_state(job.job, data, trainer=job.world.peer(C))
    forged = json.loads((out / "commitments.json").read_text())
    prev = 0
    for entry in forged:
        entry["batch_indices_sha256"] = mine.order.segment_sha256(prev, entry["step"])
        prev = entry["step"]
    (out / "commitments.json").write_text(json.dumps(forged))
    rechain(out, lambda step, tensors: None)  # relink the chain over the new order hashes
    restate_metrics(out, trainer=job.world.peer(C))  # and claim what H's model scores on C's split
    _failed(job.verify(out, signer=C, assigned=C), "endpoints", "initialisation", "PeerID")


def test_c_training_for_h_peer_id_is_refused_the_verifier_takes_the_signer(job: Job) -> None:
    # The coordinator tells C that H is the trainer: C really trains, for H's PeerID, and signs as C.
    out = job.train("c-for-h", trainer=job.world.peer(H))
    _failed(job.verify(out, signer=C, assigned=C), "commitments", "data order", "PeerID")
    # Nor can the coordinator put a trainer in the job document: the signed spec has no such field.
    doc = json.loads(json.dumps(job.doc))
    doc["training"]["trainer"] = job.world.peer(C)
    with pytest.raises(ValidationError):
        parse_training_job(doc, allow_file_uris=True)
    # The node's own signing code refuses to sign a run trained for another PeerID than its certificate's.
    now = dt.datetime.now(dt.UTC)
    run = TrainingRun(status="ok", reason="", output_dir=out, started_at=now, finished_at=now,
                      trainer=job.world.peer(H), messages=[], summary={})  # fmt: skip
    with pytest.raises(VerificationError) as refused:
        sign_completion_proof(job=job.doc, run=run, identity=job.identity(C), token_jti="jti-1")
    assert (refused.value.field, refused.value.rule) == ("trainer", "F1")


def test_c_own_run_signed_by_c_passes(job: Job) -> None:
    # Positive control: C doing the work itself, for its own certificate's PeerID, is verified and paid.
    out = job.train("c-own", trainer=job.identity(C).peer_id())
    report = job.verify(out, signer=C, assigned=C)
    assert report.passed, report.to_markdown()
    # And H's proof over C's run is the same refusal the other way round (the rule is symmetric).
    _failed(job.verify(out, signer=H, assigned=H), "commitments", "data order")


def test_c_listed_under_h_node_still_cannot_sign_h_run(job: Job) -> None:
    # The coordinator lists C's genuine certificate among H's node's certificates (as after a renewal), so
    # the identity check accepts C's proof for H's job: the run is still rebuilt for C's signing key.
    out = job.copy("c-listed")
    report = _verify_listed(job, out, job.world.sign(out, job=job.job, node=C), signer=C)
    _failed(report, "commitments", "data order", "PeerID")


def _claimed(job: Job, out: Path, *, signer: str, trainer: str, links: list[dict[str, Any]]) -> Any:
    """A proof over ``out`` signed by ``signer``'s key that names ``trainer`` as the key the run was trained
    for and carries ``links`` (what C sends to pass H's run off as its own after a "renewal")."""
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.verification.proof import CompletionProof, sign_proof

    proof = job.world.sign(out, job=job.job, node=signer).proof
    claimed = CompletionProof.model_validate(
        {**proof.model_dump(), "trainer_peer_id": trainer, "renewal_links": links}
    )
    return sign_proof(claimed, load_private_key(job.world.pki.node_key(signer)))


def _verify_listed(job: Job, out: Path, proof: Any, *, signer: str) -> VerificationReport:
    """The verifier with a coordinator that lists C's certificate under H's node (as after a renewal) and
    holds no link for it."""
    from cyxwiz.verification.replay import ReplayPolicy
    from cyxwiz.verification.verifier import Expectations, JobData, verify_job

    w = job.world
    return verify_job(
        proof=proof,
        node_certificate=w.cert(signer),
        job=job.job,
        output_dir=out,
        data=JobData(train=w.digits.train, holdout=w.digits.holdout, holdout_sha256=w.digits.holdout_sha256),
        trust=w.trust(),
        expect=Expectations(
            node_peer_ids=frozenset({w.peer(H), w.peer(C)}),
            token_jti="jti-1",
            received_at=dt.datetime.now(dt.UTC),
        ),
        policy=ReplayPolicy(sample_seed=1),
    )


def _refused_unpaid(
    money: MoneyWorld, report: VerificationReport, *, job_id: str, peer: str, words: tuple[str, ...]
) -> None:
    """Refused by the trainer check (before any training check runs) and the ledger refuses the release:
    C's wallet gets nothing, the escrow stays locked. C signed a claim to another key's run: ``fraud``."""
    _failed(report, "trainer", *words)
    assert report.check("training").reason.startswith("not run")
    assert verdict_of(json.loads(report.to_json())) == "fraud"
    with pytest.raises(ReportVerdictError, match="verdict"):
        _release(money, report, job_id=job_id, node=C, peer=peer)
    ledger = money.ledger()
    assert ledger.status(job_id=job_id).state is EscrowState.LOCKED
    assert (money.token(money.other_node), ledger.onchain_amount(job_id=job_id)) == (0, AMOUNT)


def _link(old: Any, new_peer: str) -> dict[str, Any]:
    from cyxwiz.verification.renewal_links import SignedRenewalLink

    return SignedRenewalLink.sign(old_key=old, new_peer_id=new_peer).to_dict()


def test_h_run_restated_under_h_renewed_key_passes_and_h_is_paid(job: Job, money_world: MoneyWorld) -> None:
    # Positive control (A7): H renews (the CA issues a certificate for H's new key K against H's link
    # H -> K) and restates its run's proof under K; the verifier rebuilds H's run and the release pays H.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cyxwiz.issuer.policy import NodeCertIssuer, RenewalRequest
    from cyxwiz.pki.ca import create_csr
    from cyxwiz.pki.certs import fingerprint_sha256
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.verification.proof import restate_proof
    from cyxwiz.verification.renewal_links import SignedRenewalLink
    from cyxwiz.verification.replay import ReplayPolicy
    from cyxwiz.verification.verifier import Expectations, JobData, verify_job

    w = job.world
    k = ed25519.Ed25519PrivateKey.generate()
    link = SignedRenewalLink.sign(old_key=load_private_key(w.pki.node_key(H)), new_peer_id=peer_id(k))
    csr = create_csr(k, common_name=H).public_bytes(serialization.Encoding.PEM).decode()
    renewed = NodeCertIssuer.from_dir(w.pki.ca_dir, lifetime=dt.timedelta(hours=1)).renew(
        RenewalRequest.build(certificate=w.cert(H), csr_pem=csr, link=link.to_dict())
    )
    proof = restate_proof(
        w.sign(job.h_out, job=job.job, node=H),
        node_peer_id=peer_id(renewed),
        cert_fingerprint_sha256=fingerprint_sha256(renewed).hex(),
        links=[link.to_dict()],
        private_key=k,
    )
    report = verify_job(
        proof=proof,
        node_certificate=renewed,
        job=job.job,
        output_dir=job.h_out,
        data=JobData(train=w.digits.train, holdout=w.digits.holdout, holdout_sha256=w.digits.holdout_sha256),
        trust=w.trust(),
        expect=Expectations(
            node_peer_ids=frozenset({w.peer(H), peer_id(renewed)}),
            token_jti="jti-1",
            received_at=dt.datetime.now(dt.UTC),
        ),
        policy=ReplayPolicy(sample_seed=1),
    )
    assert report.passed, report.to_markdown()
    record = _release(money_world, report, job_id="relabel-h-renewed", node=H, peer=w.peer(H))
    assert record.state is EscrowState.RELEASED and money_world.token(money_world.node) == AMOUNT


def test_c_resigning_h_outputs_with_a_forged_link_is_refused_and_unpaid(
    job: Job, money_world: MoneyWorld
) -> None:
    # C claims its key is H's renewal: a link "H -> C" it signed itself (it has no H key).
    from cyxwiz.pki.keys import load_private_key

    w = job.world
    out = job.copy("c-forged-link")
    forged = _link(load_private_key(w.pki.node_key(C)), w.peer(C))
    forged["link"]["old_peer_id"] = w.peer(H)  # the link names H's key as the one that signed it
    report = _verify_listed(
        job, out, _claimed(job, out, signer=C, trainer=w.peer(H), links=[forged]), signer=C
    )
    _refused_unpaid(
        money_world,
        report,
        job_id="relabel-forged",
        peer=w.peer(C),
        words=("not signed by the old key", "forged"),
    )


def test_c_link_signed_by_another_key_than_the_trainers_is_refused(job: Job, money_world: MoneyWorld) -> None:
    # A link H -> C that a third key signed (whoever holds it, it is not H's key).
    import base64

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cyxwiz.verification.renewal_links import RenewalLink, SignedRenewalLink

    w = job.world
    body = RenewalLink(old_peer_id=w.peer(H), new_peer_id=w.peer(C), issued_at=1_700_000_000_000)
    other = ed25519.Ed25519PrivateKey.generate()
    link = SignedRenewalLink(link=body, signature=base64.b64encode(other.sign(body.message())).decode())
    out = job.copy("c-other-signed")
    proof = _claimed(job, out, signer=C, trainer=w.peer(H), links=[link.to_dict()])
    report = _verify_listed(job, out, proof, signer=C)
    _refused_unpaid(
        money_world,
        report,
        job_id="relabel-other-signed",
        peer=w.peer(C),
        words=("not signed by the old key",),
    )


def test_c_link_chain_with_a_gap_is_refused(job: Job, money_world: MoneyWorld) -> None:
    # H really renewed to K1 (H's key signed H -> K1); C shows K2 -> C from a key K2 it made, and no link
    # K1 -> K2 exists: every link verifies, the chain does not reach C.
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id

    w = job.world
    k1, k2 = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    links = [_link(load_private_key(w.pki.node_key(H)), peer_id(k1)), _link(k2, w.peer(C))]
    out = job.copy("c-gap")
    proof = _claimed(job, out, signer=C, trainer=w.peer(H), links=links)
    report = _verify_listed(job, out, proof, signer=C)
    _refused_unpaid(
        money_world,
        report,
        job_id="relabel-gap",
        peer=w.peer(C),
        words=("no chain of renewal links", w.peer(H)),
    )


def test_c_link_from_another_nodes_key_is_refused(job: Job, money_world: MoneyWorld) -> None:
    # A genuine link into C from a key that is not H's (another node X vouching for C): it starts from no
    # key of the trainer's.
    from cryptography.hazmat.primitives.asymmetric import ed25519

    w = job.world
    out = job.copy("c-other-node")
    links = [_link(ed25519.Ed25519PrivateKey.generate(), w.peer(C))]
    proof = _claimed(job, out, signer=C, trainer=w.peer(H), links=links)
    report = _verify_listed(job, out, proof, signer=C)
    _refused_unpaid(
        money_world, report, job_id="relabel-other-node", peer=w.peer(C), words=("no chain of renewal links",)
    )


def test_c_listed_under_h_node_without_a_link_is_refused(job: Job, money_world: MoneyWorld) -> None:
    # The coordinator lists C's PeerID under H's node, and C names H as its run's trainer: the coordinator's
    # word is all there is, and it is not enough.
    w = job.world
    out = job.copy("c-no-link")
    proof = _claimed(job, out, signer=C, trainer=w.peer(H), links=[])
    report = _verify_listed(job, out, proof, signer=C)
    _refused_unpaid(
        money_world, report, job_id="relabel-no-link", peer=w.peer(C), words=("no chain of renewal links",)
    )
