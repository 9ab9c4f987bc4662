"""The arbiter's flow on a filed dispute (issue 20; SPEC F1, H2): it replays the segment the evidence names
from the node's committed checkpoints with the verifier's replay and settles with the arbiter's key.
A forged segment is upheld (refund to the user), an honest one is rejected (release to the node, the
positive control); supply is conserved; each decision and refusal is audited; test-set evidence (no
upload path) is refused and moves nothing. Real LiteSVM ledger (in-process), real SQLite coordinator
store, real encrypted object store and a real training run; only the archive fetch of the node's signed
outputs (proof signature + re-hash, covered by the referee tests) is replaced by a directory copy."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.errors import ConflictError, ValidationError
from cyxwiz.ledger.store import EscrowState
from cyxwiz.storage import layout
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import LocalObjectStore
from cyxwiz.verification.commitments import read_commitments
from tasks import arbiter, holds, services
from tasks.referee import NodeEvidence
from tests.flows.test_holds import AMOUNT, Plane, plane
from tests.ledger.conftest import NODE_PEER, local_world, pki
from tests.verification.conftest import World as TrainingWorld
from tests.verification.conftest import rebuild_trace, reference_job, world

__all__ = ["local_world", "pki", "plane", "world"]


class Arbiter:
    def __init__(self, plane: Plane, training: TrainingWorld, store: LocalObjectStore) -> None:
        self.plane, self.training, self.store = plane, training, store
        self.outputs: dict[str, Path] = {}

    def disputed_job(self, outputs: Path, evidence: dict[str, Any]) -> str:
        """A verified job held in its window, ``evidence`` filed by its owner, ``outputs`` from its node."""
        from cyxwiz.ids import new_job_id
        from tasks.control import JobRequest

        job_id = new_job_id()
        plane = self.plane
        plane.channel.create_job(user="alice", spec={"job_type": "model"}, duration_s=60, job_id=job_id)
        plane.ledger.create(job_id=job_id, user=plane.world.user, amount=AMOUNT, run_id=f"run-{job_id}")
        wallet = str(plane.world.node.pubkey())
        plane.ledger.assign(job_id=job_id, node_wallet=wallet, node_peer_id=NODE_PEER)
        doc = reference_job(self.training.digits, job_id="job-1")  # the session's honest run's secret
        doc["job_id"] = job_id
        dataset_key = layout.job_input(job_id, "dataset.npz")
        self.store.put_file(dataset_key, self.training.digits.train)
        request = JobRequest(
            job_id=job_id, user="alice", payment=AMOUNT, dataset="sklearn:digits", training_doc={},
            memory_mb=512, wall_seconds=60, dispute_window_s=60,
        )  # fmt: skip
        settlement = holds.hold_release(
            request,
            {"assignment": {"wallet": wallet, "peer_id": NODE_PEER}, "training_doc": doc,
             "dataset_key": dataset_key},
            {"attestation": plane.world.attest(job_id)},
        )  # fmt: skip
        closes_at = dt.datetime.fromisoformat(settlement["closes_at"])
        plane.book().file_dispute(
            job_id=job_id, user_id="alice", evidence=evidence, now=closes_at - dt.timedelta(seconds=1)
        )
        self.outputs[job_id] = outputs
        return job_id

    def node_outputs(self, job_id: str, peer: str, into: Path) -> tuple[NodeEvidence | None, str | None]:
        assert peer == NODE_PEER, "the arbiter asks for the assigned node's evidence"
        shutil.copytree(self.outputs[job_id], into)
        # The session's training runs are node-1's; the arbiter replays the run the proof was trained for.
        return NodeEvidence(output_dir=into, signer=self.training.peer(), trainer=self.training.peer()), None


@pytest.fixture
def court(plane: Plane, world: TrainingWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Arbiter:
    store = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.generate())
    court = Arbiter(plane, world, store)
    monkeypatch.setattr(services, "store", lambda: store)
    monkeypatch.setattr(arbiter, "arbiter_ledger", lambda: plane.ledger)
    monkeypatch.setattr(arbiter, "node_outputs", court.node_outputs)
    return court


def _forged(training: TrainingWorld, name: str = "arbiter-forged") -> tuple[Path, int]:
    """A careful cheat: one checkpoint rewritten, every hash and commitment made consistent again; returns
    the outputs and the start step of the segment that no longer reproduces."""
    commitments = read_commitments(training.honest_out / "commitments.json")
    tampered = commitments[2].step
    out = training.copy_outputs(name)

    def nudge(step: int, tensors: dict[str, Any]) -> dict[str, Any] | None:
        if step != tampered:
            return None
        name = next(k for k in tensors if k.startswith("model."))
        return {**tensors, name: tensors[name] + 1e-3}

    rebuild_trace(out, nudge)
    return out, commitments[1].step


@pytest.mark.slow
def test_a_forged_segment_is_upheld_and_an_honest_one_rejected(court: Arbiter) -> None:
    plane, chain = court.plane, court.plane.world
    forged_out, forged_start = _forged(court.training)
    honest_start = read_commitments(court.training.honest_out / "commitments.json")[1].step
    forged = court.disputed_job(forged_out, {"kind": "segment", "segment_start": forged_start})
    honest = court.disputed_job(court.training.honest_out, {"kind": "segment", "segment_start": honest_start})
    # The sealed case is ciphertext under the trusted prefix (never the job-scoped jobs/{id}/).
    assert arbiter.case_key(forged).startswith(f"holdout/{forged}/")
    assert court.store.head(arbiter.case_key(forged)).encrypted
    assert b"job_secret" not in court.store.body_path(arbiter.case_key(forged)).read_bytes()
    holds.finish_hold(forged)  # the lifecycle moved this one into the dispute escrow; the flow moves `honest`
    total = chain.token_total(forged, honest)
    user, node = chain.token(chain.user), chain.token(chain.node)

    case = arbiter.load_case(forged)
    resolution = arbiter.decide(case)
    assert resolution.upheld and "does not reproduce" in resolution.reason
    decision = arbiter.settle(case, resolution)
    assert decision["outcome"] == "refund" and decision["state"] == "refunded"
    assert decision["slash"]["slashed"] is False, "the node has no stake here: the refund stands alone"
    record = plane.ledger.status(job_id=forged)
    assert record.state is EscrowState.REFUNDED and record.resolution == "refund"
    assert chain.token(chain.user) - user == AMOUNT and chain.token(chain.node) == node

    case = arbiter.load_case(honest)  # positive control: the honest segment reproduces bit for bit
    resolution = arbiter.decide(case)
    assert not resolution.upheld and "reproduces bit for bit" in resolution.reason
    decision = arbiter.settle(case, resolution)
    assert decision["outcome"] == "release"
    assert plane.ledger.status(job_id=honest).state is EscrowState.RELEASED
    assert chain.token(chain.node) - node == AMOUNT and chain.token(chain.user) - user == AMOUNT
    assert chain.token_total(forged, honest) == total, "supply conserved"
    assert plane.channel.job(forged)["status"] == "refunded"
    assert plane.channel.job(honest)["status"] == "released"
    assert "escrow.arbiter.upheld" in plane.audit.actions(forged)
    assert "escrow.arbiter.rejected" in plane.audit.actions(honest)
    assert "Dispute of" in arbiter.to_markdown(decision)
    # A settled dispute is not decided twice; a run that died after the ledger move gets its status back.
    plane.channel.set_status(forged, "disputed")
    with pytest.raises(ConflictError, match=r"already resolved \(refund\)"):
        arbiter.load_case(forged)
    assert plane.channel.job(forged)["status"] == "refunded"
    assert chain.token_total(forged, honest) == total


def test_test_set_evidence_and_undisputed_jobs_are_refused(court: Arbiter) -> None:
    from cyxwiz.coordinator.holds import holds as holds_table

    plane = court.plane
    # F1, payment fraud by a user: a test set picked after delivery can always be rows the model gets
    # wrong. Filing it is refused with the rule named; nothing is frozen, the release stays held.
    held_for_testset, closes_at = plane.held_job()
    digest = hashlib.sha256(b"my test set").hexdigest()
    with pytest.raises(ValidationError) as caught:
        plane.book().file_dispute(
            job_id=held_for_testset, user_id="alice", evidence={"kind": "testset", "testset_sha256": digest},
            now=closes_at - dt.timedelta(seconds=1),
        )  # fmt: skip
    assert caught.value.field == "evidence.kind" and "no evidence" in caught.value.message
    assert plane.book().get(held_for_testset).state == "held"
    assert plane.ledger.status(job_id=held_for_testset).state is EscrowState.LOCKED, "nothing frozen"
    # A case of another kind in the dispute escrow (filed by hand, or by an older coordinator) is refused.
    job_id = court.disputed_job(court.training.honest_out, {"kind": "segment", "segment_start": 0})
    with plane.channel.store.engine.begin() as conn:
        conn.execute(
            holds_table.update().where(holds_table.c.job_id == job_id).values(evidence={"kind": "testset"})
        )
    with pytest.raises(ValidationError) as caught:
        arbiter.load_case(job_id)
    assert caught.value.field == "evidence.kind"
    assert plane.ledger.status(job_id=job_id).state is EscrowState.DISPUTED, "nothing moved"
    assert "escrow.arbiter.refused" in plane.audit.actions(job_id)
    # A job whose release is merely held (no dispute filed) is not the arbiter's.
    held, _ = plane.held_job()
    with pytest.raises(ConflictError):
        arbiter.load_case(held)
    assert plane.ledger.status(job_id=held).state is EscrowState.LOCKED


def test_a_sealed_document_for_another_job_is_refused(court: Arbiter) -> None:
    job_id = court.disputed_job(court.training.honest_out, {"kind": "segment", "segment_start": 0})
    sealed = json.loads(court.store.get_bytes(arbiter.case_key(job_id)))
    sealed["training_doc"]["job_id"] = "job-other"
    court.store.put_bytes(arbiter.case_key(job_id), json.dumps(sealed).encode(), encrypt=True)
    with pytest.raises(ConflictError, match="another job"):
        arbiter.decide(arbiter.load_case(job_id))
    assert court.plane.ledger.status(job_id=job_id).state is EscrowState.DISPUTED


@pytest.mark.slow
def test_the_flow_upholds_a_forged_segment_slashes_the_stake_and_publishes_its_decision(
    court: Arbiter, prefect_server: object
) -> None:
    """The ``resolve-dispute`` flow end to end on a real Prefect server: the node staked, its forged segment
    is upheld, the user gets the escrow back plus the slashed share, and the decision is an artifact."""
    from prefect.client.orchestration import get_client

    from cyxwiz.ledger import provision
    from cyxwiz.ledger.stake import StakeLedger, StakePolicy
    from flows.arbiter import resolve_dispute

    chain, stake = court.plane.world, 40_000
    provision.fund_wallet(
        chain.chain, payer=chain.payer, mint=chain.mint, wallet=chain.node.pubkey(), amount=stake,
        mint_authority=chain.mint_authority,
    )  # fmt: skip
    stakes = StakeLedger(ledger=court.plane.ledger)
    stakes.stake(peer_id=NODE_PEER, node=chain.node, amount=stake)
    out, start = _forged(court.training, "arbiter-forged-flow")
    job_id = court.disputed_job(out, {"kind": "segment", "segment_start": start})
    user = chain.token(chain.user)
    decision = resolve_dispute(job_id)
    share = stake * StakePolicy().slash_bps // 10_000
    assert decision["upheld"] and decision["outcome"] == "refund"
    assert decision["slash"] == {"slashed": True, "peer_id": NODE_PEER, "stake_left": stake - share}
    assert chain.token(chain.user) - user == AMOUNT + share
    assert stakes.status(peer_id=NODE_PEER).amount == stake - share
    with get_client(sync_client=True) as client:
        artifacts = [a for a in client.read_artifacts() if a.key == f"dispute-{job_id}"]
    assert artifacts and "upheld" in str(artifacts[0].data)
