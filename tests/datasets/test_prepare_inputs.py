"""What the lifecycle stores for a node and what it keeps (SPEC F1, C3, D2): the node's inputs hold the
training rows only; the holdout and the split seed are sealed (encrypted) outside every job prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cyxwiz.storage import LocalObjectStore, MasterKey
from tasks.config import ControlPlaneConfig
from tasks.control import holdout_key_for, holdout_record_key, parse_job_request, prepare_inputs
from tests.datasets.conftest import npz, sha, table

J1 = "job-00000000000000000001"  # canonical job ids (cyxwiz.ids.JOB_ID)


def test_inputs_carry_no_holdout_and_no_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "master.key"
    MasterKey.generate().write(key_file)
    monkeypatch.setenv("CYXWIZ_STORE_MASTER_KEY_FILE", str(key_file))
    config = ControlPlaneConfig(
        home=tmp_path, pki_root=tmp_path, ledger_config=tmp_path / "l.json",
        store_root=tmp_path / "store", audit_dir=tmp_path / "audit",
    )  # fmt: skip
    store = LocalObjectStore(root=config.store_root, master_key=MasterKey.from_file(key_file))
    x, y = table(100)
    data = npz(x=x, y=y)
    store.put_bytes("users/alice/datasets/d.npz", data)
    spec = {
        "user": "alice",
        "payment": 10,
        "dataset": {"uri": "s3://cyxwiz/users/alice/datasets/d.npz", "sha256": sha(data)},
        "model": {"input_shape": [4], "layers": [{"name": "fc", "type": "Linear", "out_features": 3}]},
        "training": {"seed": 1},
        "task": {"num_classes": 3},
    }
    request = parse_job_request(spec, job_id=J1)
    prepared = prepare_inputs(store, request)
    assert prepared.holdout_source == "secret-split"

    record = json.loads(store.get_bytes(holdout_record_key(J1)))
    for key in (holdout_key_for(J1), holdout_record_key(J1)):
        assert store.head(key).encrypted and not key.startswith("jobs/")
    node_side = {i.key: store.get_bytes(i.key) for i in store.list(f"jobs/{J1}/inputs/")}
    assert set(node_side) == {f"jobs/{J1}/inputs/dataset.npz", f"jobs/{J1}/inputs/job.json"}
    blob = b"".join(node_side.values())
    assert record["seed"].encode() not in blob and record["holdout_sha256"].encode() not in blob
    assert (
        sha(node_side[f"jobs/{J1}/inputs/dataset.npz"]) == prepared.dataset_sha256 == record["train_sha256"]
    )
    assert (record["train_rows"], record["holdout_rows"]) == (80, 20)


def test_a_user_holdout_file_stays_in_the_trusted_zone(tmp_path: Path) -> None:
    """F1: the user's own holdout file is read by the trusted side only: the node's inputs are the training
    file and the job document, with neither the holdout's bytes nor its hash; the holdout the verifier uses
    is a sealed copy outside every job prefix."""
    store = LocalObjectStore(root=tmp_path / "store", master_key=MasterKey.generate())
    x, y = table(80, seed=1)
    hx, hy = table(30, seed=2)
    data, held = npz(x=x, y=y), npz(x=hx, y=hy)
    store.put_bytes("users/alice/datasets/d.npz", data)
    store.put_bytes("users/alice/datasets/h.npz", held)
    spec = {
        "user": "alice",
        "payment": 10,
        "dataset": {
            "uri": "s3://cyxwiz/users/alice/datasets/d.npz",
            "sha256": sha(data),
            "holdout": {"uri": "s3://cyxwiz/users/alice/datasets/h.npz", "sha256": sha(held)},
        },
        "model": {"input_shape": [4], "layers": [{"name": "fc", "type": "Linear", "out_features": 3}]},
        "training": {"seed": 1},
        "task": {"num_classes": 3},
    }
    prepared = prepare_inputs(store, parse_job_request(spec, job_id=J1))
    assert prepared.holdout_source == "user-holdout"
    node_side = {i.key: store.get_bytes(i.key) for i in store.list(f"jobs/{J1}/inputs/")}
    assert set(node_side) == {f"jobs/{J1}/inputs/dataset.npz", f"jobs/{J1}/inputs/job.json"}
    blob = b"".join(node_side.values())
    assert held not in blob and sha(held).encode() not in blob
    assert prepared.holdout_sha256.encode() not in blob
    assert store.head(prepared.holdout_key).encrypted and not prepared.holdout_key.startswith("jobs/")
