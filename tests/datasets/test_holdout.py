"""An honest holdout (SPEC F1): split on the trusted side with a secret per-job seed from the CSPRNG.

The attacker is a node holding everything it receives — the training file and the signed training
document (seed, job id, hyper-parameters). For private data it cannot rebuild the holdout rows or their
hash; for the public digits reference the record says ``public-derived``.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from cyxwiz.datasets import ModelShape, parse_dataset, prepare_dataset
from cyxwiz.datasets.prepare import Table, npz_bytes, split_indices
from tests.datasets.conftest import SHAPE, World, npz, table

J1 = "job-00000000000000000001"  # canonical job ids (cyxwiz.ids.JOB_ID)


def arrays(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive["X"], archive["y"]


def test_a_node_cannot_reproduce_the_holdout_or_its_hash(world: World) -> None:
    x, y = table(200, seed=3)
    ref = world.put(npz(x=x, y=y))
    spec = parse_dataset(ref)
    first = prepare_dataset(spec, sources=world.sources, user="alice", shape=SHAPE)
    second = prepare_dataset(spec, sources=world.sources, user="alice", shape=SHAPE)
    assert first.record.source == "secret-split" and first.record.seed is not None

    # What the node holds: the training rows and the public training document.
    train_x, _ = arrays(first.train)
    node_knows = {"training": {"seed": 7}, "job_id": J1, "dataset": {"sha256": first.train_sha256}}
    assert first.record.seed not in json.dumps(node_knows) + first.train.hex()
    held_x, _ = arrays(first.holdout)
    assert not any((row == train_x).all(axis=1).any() for row in held_x), "no holdout row is sent"

    # The same data and spec, split again: another secret seed, another holdout (no public derivation).
    assert first.holdout_sha256 != second.holdout_sha256
    # Every seed a node could derive from what it knows gives another holdout hash.
    fraction = spec.holdout_fraction
    guesses = [0, 7, 1797, int(hashlib.sha256(J1.encode()).hexdigest(), 16), int(first.train_sha256, 16)]
    for seed in guesses:
        _, rows = split_indices(200, seed=seed, fraction=fraction)
        guess = npz_bytes(Table(x=x[rows].astype(np.float32), y=y[rows].astype(np.int64)))
        assert hashlib.sha256(guess).hexdigest() != first.holdout_sha256
    # The trusted record, with its seed, does rebuild it: the split is auditable on the trusted side.
    _, rows = split_indices(200, seed=int(first.record.seed, 16), fraction=fraction)
    np.testing.assert_array_equal(arrays(first.holdout)[1], y[rows])


def test_a_user_holdout_file_is_used_as_given(world: World) -> None:
    x, y = table(80, seed=1)
    hx, hy = table(30, seed=2)
    ref: dict[str, Any] = {**world.put(npz(x=x, y=y)), "holdout": world.put(npz(x=hx, y=hy), name="h.npz")}
    prepared = prepare_dataset(parse_dataset(ref), sources=world.sources, user="alice", shape=SHAPE)
    assert (prepared.record.source, prepared.record.seed) == ("user-holdout", None)
    assert prepared.record.train_rows == 80 and prepared.record.holdout_rows == 30
    np.testing.assert_allclose(arrays(prepared.holdout)[0], hx)


def test_public_digits_say_public_derived(world: World) -> None:
    shape = ModelShape(input_shape=(64,), input_dtype="float32", num_classes=10)
    prepared = prepare_dataset(parse_dataset("sklearn:digits"), sources=world.sources, user="u", shape=shape)
    assert prepared.record.source == "public-derived"
    assert prepared.record.train_rows + prepared.record.holdout_rows == 1797
