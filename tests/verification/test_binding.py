"""Runs bound to their job (issue 20; SPEC F1, threat "malicious node"): the per-job secret changes every
seed, another job's trace re-signed for this job fails, and only the control plane sets the secret."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from cyxwiz.errors import ValidationError
from cyxwiz.training import engine
from cyxwiz.training.data import load_dataset
from cyxwiz.verification.binding import bind_training_doc, new_job_secret, refuse_submitted_secret
from cyxwiz.verification.replay import ReplayPolicy
from tests.verification.conftest import World, rebuild_trace, reference_job, write_job
from tests.verification.test_verifier import failed


def test_secret_changes_init_split_order_and_dropout(world: World) -> None:
    data = load_dataset(
        world.digits.train, sha256=None, input_shape=(64,), input_dtype="float32", num_classes=10
    )
    doc = reference_job(world.digits, job_id="same-spec")
    a = engine.new_state(write_job(world.tmp / "bind-a", doc)[1], data, trainer=world.peer())
    doc["training"]["job_secret"] = new_job_secret()
    b = engine.new_state(write_job(world.tmp / "bind-b", doc)[1], data, trainer=world.peer())
    assert a.seed != b.seed
    assert engine.checkpoint_bytes(a, step=0) != engine.checkpoint_bytes(b, step=0)
    assert a.order.segment_sha256(0, 5) != b.order.segment_sha256(0, 5)
    assert not (a.validation.y.shape == b.validation.y.shape and (a.validation.x == b.validation.x).all())


def test_same_spec_other_secret_trace_resigned_fails(world: World) -> None:
    # Job 1c has job 1's public spec (same seed, same everything) but its own secret: job 1's outputs,
    # signed for 1c, carry the wrong data order.
    doc = reference_job(world.digits, job_id="job-1c", job_secret=new_job_secret())
    _, job = write_job(world.tmp / "job-1c", doc)
    report = world.verify(world.honest_out, world.sign(world.honest_out, job=job), job=job)
    failed(report, "commitments", "data order", "secret")


def test_same_spec_other_secret_with_forged_order_hashes_fails_at_init(world: World) -> None:
    doc = reference_job(world.digits, job_id="job-1d", job_secret=new_job_secret())
    _, job = write_job(world.tmp / "job-1d", doc)
    out = world.copy_outputs("other-job-forged-order")
    state = engine.new_state(job, load_dataset(world.digits.train, sha256=None, input_shape=(64,),
                                               input_dtype="float32", num_classes=10),
                             trainer=world.peer())  # fmt: skip
    forged = json.loads((out / "commitments.json").read_text())
    prev = 0
    for entry in forged:
        entry["batch_indices_sha256"] = state.order.segment_sha256(prev, entry["step"])
        prev = entry["step"]
    (out / "commitments.json").write_text(json.dumps(forged))
    rebuild_trace(out, lambda step, t: None)  # relink the chain
    report = world.verify(out, world.sign(out, job=job), job=job, policy=ReplayPolicy(sample_seed=3))
    failed(report, "endpoints", "initialisation", "secret")


def test_unbound_job_is_refused_and_bound_one_passes(world: World) -> None:
    doc = reference_job(world.digits, job_id="unbound")
    del doc["training"]["job_secret"]
    _, job = write_job(world.tmp / "unbound", doc)
    report = world.verify(world.honest_out, world.sign(world.honest_out, job=job), job=job)
    failed(report, "binding", "job_secret")
    assert world.verify(world.honest_out, world.sign(world.honest_out)).passed  # positive control


def test_only_the_control_plane_sets_the_secret() -> None:
    doc = {"training": {"seed": 1}}
    bound = bind_training_doc(doc)
    secret = bound["training"]["job_secret"]
    assert len(secret) == 64 and int(secret, 16) >= 0 and "job_secret" not in doc["training"]
    assert bind_training_doc(doc)["training"]["job_secret"] != secret  # fresh from the CSPRNG each time
    for attempt in (bind_training_doc, refuse_submitted_secret):
        with pytest.raises(ValidationError) as info:
            attempt(copy.deepcopy(bound))
        assert info.value.field == "training.job_secret" and info.value.rule == "F1"
    assert hashlib.sha256(secret.encode()).hexdigest() not in json.dumps(doc)


def test_the_run_seed_binds_the_trainer_only_with_a_secret_and_not_for_redundant_shares(world: World) -> None:
    """Issue 17 (F1, A5): the PeerID of the node that signs mixes into the seed of every bound job; a local
    job (no secret) keeps the public seed; the two shares of a redundant job train one run; a bound job
    without a trainer, or with anything but a canonical Ed25519 PeerID, is refused, never trained unbound."""
    h, c = world.peer("node-1"), world.peer("node-2")
    job = world.job
    assert engine.binds_trainer(job)
    seeds = [engine.run_seed(job, trainer=peer) for peer in (h, h, c)]
    assert seeds[0] == seeds[1] != seeds[2]
    doc = reference_job(world.digits, job_id="seed-rules")
    del doc["training"]["job_secret"]
    local = write_job(world.tmp / "seed-local", doc)[1]
    assert not engine.binds_trainer(local)
    assert engine.run_seed(local, trainer=None) == engine.run_seed(local, trainer=h) == local.training.seed
    doc = reference_job(world.digits, job_id="seed-redundant")
    doc["verification"] = {"mode": "redundant"}
    shared = write_job(world.tmp / "seed-redundant", doc)[1]
    assert not engine.binds_trainer(shared)
    assert engine.run_seed(shared, trainer=h) == engine.run_seed(shared, trainer=c) != shared.training.seed
    for bad, rule in ((None, "F1"), (h.lower(), "A5"), (f" {h}", "A5"), ("12D3KooWNotAPeerId", "A5")):
        with pytest.raises(ValidationError) as info:
            engine.run_seed(job, trainer=bad)
        assert (info.value.field, info.value.rule) == ("trainer", rule)
