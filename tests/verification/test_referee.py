"""Refereed delegation and the dispute window (issue 20; SPEC F1, threat "malicious node").

Two nodes' traces of one job: the referee bisects their hash-linked chains to the first difference,
replays only that segment, pays the node that reproduces it and refuses the other. Disputes: the window,
the escrow seam (any object with Ledger's ``dispute``/``resolve``), and the arbiter's replay/test-set
decisions."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from cyxwiz.errors import ConflictError, ValidationError
from cyxwiz.training.data import Dataset, load_dataset
from cyxwiz.verification.commitments import Commitment, read_commitments
from cyxwiz.verification.dispute import (
    DisputeWindow,
    Evidence,
    open_dispute,
    resolve_dispute,
    settle_dispute,
)
from cyxwiz.verification.referee import Trace, first_difference, referee
from tests.verification import conftest
from tests.verification.conftest import World, rebuild_trace


def train_data(world: World) -> Dataset:
    return load_dataset(
        world.digits.train, sha256=None, input_shape=(64,), input_dtype="float32", num_classes=10
    )


def trace(node: str, out: Path, *, signer: str | None = None) -> Trace:
    """``out`` as ``node``'s trace; the session's runs are node-1's (the referee rebuilds the signer's)."""
    return Trace(
        node=node,
        trainer=signer or conftest.TRAINER,
        output_dir=out,
        commitments=read_commitments(out / "commitments.json"),
    )


def forge_from(world: World, name: str, step: int) -> Path:
    out = world.copy_outputs(name)

    def nudge(at: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if at < step:
            return None
        tensors["model.blocks.l_fc1.weight"] += 1e-3  # every checkpoint from ``step`` on is off
        return tensors

    rebuild_trace(out, nudge)
    return out


def test_two_honest_nodes_agree(world: World) -> None:
    other = world.copy_outputs("referee-honest-2")
    verdict = referee(world.job, train_data(world), trace("node-1", world.honest_out), trace("node-2", other))
    assert (
        verdict.agreed
        and verdict.deviators == ()
        and verdict.settlement() == {"node-1": "pay", "node-2": "pay"}
    )


@pytest.mark.parametrize("honest_first", [True, False])
def test_bisection_finds_the_first_forged_segment_and_refuses_its_node(
    world: World, honest_first: bool
) -> None:
    forged = forge_from(world, f"referee-forged-{honest_first}", 120)
    pair = [trace("honest", world.honest_out), trace("cheat", forged)]
    a, b = pair if honest_first else pair[::-1]
    verdict = referee(world.job, train_data(world), a, b)
    assert not verdict.agreed and verdict.segment == (115, 120)
    assert verdict.honest == ("honest",) and verdict.deviators == ("cheat",)
    assert verdict.settlement() == {"honest": "pay", "cheat": "refuse"}
    assert verdict.probes <= 8  # log2(51) + 1 comparisons, not 51
    assert "115→120" in verdict.reason and "cheat" in verdict.reason


def test_a_node_with_another_initialisation_is_refused(world: World) -> None:
    forged = forge_from(world, "referee-init", 0)
    verdict = referee(world.job, train_data(world), trace("honest", world.honest_out), trace("cheat", forged))
    assert verdict.first_difference == 0 and verdict.deviators == ("cheat",) and verdict.honest == ("honest",)


def test_a_broken_chain_is_refused_without_replay(world: World) -> None:
    out = world.copy_outputs("referee-broken")
    commitments = read_commitments(out / "commitments.json")
    broken = [
        *commitments[:3],
        Commitment(**{**commitments[3].to_dict(), "prev": "0" * 64}),
        *commitments[4:],
    ]
    verdict = referee(
        world.job,
        train_data(world),
        trace("honest", world.honest_out),
        Trace(node="cheat", trainer=world.peer(), output_dir=out, commitments=broken),
    )
    assert verdict.deviators == ("cheat",) and "chain" in verdict.reason and verdict.segment is None


def test_first_difference_is_exact_at_every_position(world: World) -> None:
    chain = read_commitments(world.honest_out / "commitments.json")
    for cut in (0, 1, 25, len(chain) - 1):
        other = list(chain[:cut])
        prev = chain[cut - 1].digest() if cut else "0" * 64
        for c in chain[cut:]:
            c2 = Commitment(
                **{
                    **c.to_dict(),
                    "prev": prev,
                    "weights_sha256": hashlib.sha256(c.weights_sha256.encode()).hexdigest(),
                }
            )
            other.append(c2)
            prev = c2.digest()
        assert first_difference(chain, other)[0] == cut
    assert first_difference(chain, list(chain)) == (None, 1)
    assert first_difference(chain, chain[:-1])[0] == len(chain) - 1


class Escrow:
    """Records what the arbiter's flow asks of the escrow (the seam Ledger.dispute/resolve fills)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def dispute(self, *, job_id: str, reason: str) -> None:
        self.calls.append(("dispute", {"job_id": job_id, "reason": reason}))

    def resolve(
        self, *, job_id: str, outcome: str, node_wallet: Any = None, proof_ref: str | None = None
    ) -> None:
        self.calls.append(("resolve", {"job_id": job_id, "outcome": outcome, "node_wallet": node_wallet}))

    def slash(self, *, job_id: str, reason: str) -> None:
        self.calls.append(("slash", {"job_id": job_id, "reason": reason}))


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_window_holds_the_release_and_refuses_late_disputes() -> None:
    window = DisputeWindow(verified_at=T0, seconds=3600)
    assert not window.may_release(T0 + dt.timedelta(minutes=59), disputed=False)
    assert window.may_release(T0 + dt.timedelta(hours=1), disputed=False)
    assert not window.may_release(T0 + dt.timedelta(hours=2), disputed=True)
    escrow = Escrow()
    with pytest.raises(ConflictError) as info:
        open_dispute(
            window,
            now=T0 + dt.timedelta(hours=1),
            job_id="j",
            evidence=Evidence(kind="segment", segment_start=5),
            escrow=escrow,
        )
    assert info.value.rule == "F1" and escrow.calls == []  # nothing frozen
    with pytest.raises(ValidationError):
        open_dispute(window, now=T0, job_id="j", evidence=Evidence(), escrow=escrow)  # no segment named
    open_dispute(
        window, now=T0, job_id="j", evidence=Evidence(kind="segment", segment_start=5), escrow=escrow
    )
    assert escrow.calls[0][0] == "dispute" and "step 5" in escrow.calls[0][1]["reason"]


def test_segment_dispute_upheld_on_a_forgery_and_rejected_on_an_honest_run(world: World) -> None:
    data = train_data(world)
    forged = forge_from(world, "dispute-forged", 120)
    evidence = Evidence(kind="segment", segment_start=115)
    upheld = resolve_dispute(
        evidence,
        job=world.job,
        data=data,
        output_dir=forged,
        commitments=read_commitments(forged / "commitments.json"),
        trainer=world.peer(),
    )
    assert upheld.upheld and "115→120" in upheld.reason
    honest = resolve_dispute(
        evidence,
        job=world.job,
        data=data,
        output_dir=world.honest_out,
        commitments=read_commitments(world.honest_out / "commitments.json"),
        trainer=world.peer(),
    )
    assert not honest.upheld and "reproduces" in honest.reason
    escrow = Escrow()
    assert (
        settle_dispute(upheld, job_id="j", escrow=escrow, node_wallet="w", proof_ref=None, slasher=escrow)
        == "refund"
    )
    assert [c[0] for c in escrow.calls] == ["resolve", "slash"] and escrow.calls[0][1]["outcome"] == "refund"
    escrow = Escrow()
    assert (
        settle_dispute(honest, job_id="j", escrow=escrow, node_wallet="w", proof_ref="p", slasher=escrow)
        == "release"
    )
    assert [c[0] for c in escrow.calls] == ["resolve"] and escrow.calls[0][1]["node_wallet"] == "w"
