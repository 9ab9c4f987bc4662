"""Refereed delegation (``verification.mode: redundant``; issue 20, SPEC F1, threat "malicious node").

Two nodes of the same backend class train the same job (same spec, same per-job secret) independently. In
deterministic mode honest nodes commit identical chains, so any difference is a deviation. The chains are
hash-linked (each commitment names its predecessor's digest), so equal commitments at index ``i`` mean
equal histories up to ``i``: the referee bisects for the first differing commitment with O(log N) probes,
then replays only that one segment from the checkpoint both agree on and compares the result with each
node's committed end. The node that reproduces is honest; the other deviated (refused payment, slashed
where stakes exist); if neither reproduces, both deviated. With one honest node any deviation is caught,
at the cost of a second training plus one segment (Verde-style refereed delegation).

The shares of a redundant job train one run (its seed mixes no trainer, :mod:`cyxwiz.verification.binding`);
the referee still rebuilds it for each trace's trainer and refuses to compare two traces whose trainers
would train different runs (another job's traces, or a sampled job's two nodes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cyxwiz.errors import CyxwizError, VerificationError
from cyxwiz.training import engine
from cyxwiz.training.data import Dataset
from cyxwiz.training.runtime import checkpoint_steps, segment_length
from cyxwiz.training.spec import TrainingJob
from cyxwiz.verification.commitments import Commitment, check_chain
from cyxwiz.verification.trace import CheckpointRefused, StateSchemas, read_checkpoint

Outcome = Literal["pay", "refuse"]


@dataclass(frozen=True, kw_only=True)
class Trace:
    """One node's committed run: who, who it was trained for, where its outputs are, its commitment chain."""

    node: str
    #: The PeerID the run was trained for: the key that signed the node's completion proof, or one that
    #: renewed into it by signed links (its run is rebuilt for it).
    trainer: str | None
    output_dir: Path
    commitments: Sequence[Commitment]


@dataclass(frozen=True, kw_only=True)
class Verdict:
    agreed: bool
    #: Index of the first differing commitment (None when the chains are equal).
    first_difference: int | None
    #: The refereed segment's (start step, end step), when one was replayed.
    segment: tuple[int, int] | None
    honest: tuple[str, ...]
    deviators: tuple[str, ...]
    reason: str
    #: Commitment comparisons the bisection needed.
    probes: int

    def settlement(self) -> dict[str, Outcome]:
        """Who is paid and who is refused (the ledger slashes the refused where stakes exist)."""
        return {**dict.fromkeys(self.honest, "pay"), **dict.fromkeys(self.deviators, "refuse")}


def first_difference(a: Sequence[Commitment], b: Sequence[Commitment]) -> tuple[int | None, int]:
    """(index of the first differing commitment or None, probes) of two *valid* hash-linked chains."""
    n = min(len(a), len(b))
    if n == 0:
        return (None if len(a) == len(b) else 0), 0
    probes = 1
    if a[n - 1].digest() == b[n - 1].digest():
        return (None if len(a) == len(b) else n), probes
    low, high = 0, n - 1  # the first difference lies in [low, high]; index high differs
    while low < high:
        mid = (low + high) // 2
        probes += 1
        if a[mid].digest() == b[mid].digest():
            low = mid + 1
        else:
            high = mid
    return low, probes


def _sound(trace: Trace, expected_steps: list[int]) -> str | None:
    try:
        check_chain(trace.commitments)
    except CyxwizError as exc:
        return f"broken commitment chain ({exc.message})"
    if [c.step for c in trace.commitments] != expected_steps:
        return "checkpoint schedule differs from the spec"
    return None


def referee(job: TrainingJob, data: Dataset, a: Trace, b: Trace) -> Verdict:
    """Compare two nodes' chains and decide who deviated by replaying only the first differing segment."""
    engine.make_deterministic()
    if engine.run_seed(job, trainer=a.trainer) != engine.run_seed(job, trainer=b.trainer):
        raise VerificationError(
            "the two traces are runs for different trainers: there is no one run to compare", rule="F1"
        )
    state = engine.new_state(job, data, trainer=a.trainer)
    total = state.order.total_steps
    expected = checkpoint_steps(total, segment_length(job, total))
    problems = {t.node: _sound(t, expected) for t in (a, b)}
    broken = tuple(node for node, problem in problems.items() if problem)
    if broken:
        honest = tuple(t.node for t in (a, b) if t.node not in broken)
        reasons = "; ".join(f"{node}: {problems[node]}" for node in broken)
        return Verdict(
            agreed=False,
            first_difference=None,
            segment=None,
            honest=honest,
            deviators=broken,
            reason=reasons,
            probes=0,
        )
    index, probes = first_difference(a.commitments, b.commitments)
    if index is None:
        return Verdict(
            agreed=True,
            first_difference=None,
            segment=None,
            honest=(a.node, b.node),
            deviators=(),
            reason="identical commitment chains",
            probes=probes,
        )
    schemas = StateSchemas.of(job, data, trainer=a.trainer)
    if index == 0:
        init = hashlib.sha256(engine.checkpoint_bytes(state, step=0)).hexdigest()
        return _decide(
            [(t, t.commitments[0].weights_sha256 == init) for t in (a, b)],
            index,
            None,
            probes,
            "the step-0 checkpoint differs; the seeded initialisation decides",
        )
    agreed_start = a.commitments[index - 1]
    start_tensors = None
    for t in (a, b):  # both committed this checkpoint: read it from whichever node delivered it intact
        try:
            start_tensors = read_checkpoint(t.output_dir, agreed_start, schemas.at(agreed_start.step))
            break
        except CheckpointRefused:
            continue
    if start_tensors is None:
        return Verdict(
            agreed=False,
            first_difference=index,
            segment=None,
            honest=(),
            deviators=(a.node, b.node),
            reason="neither node delivered the checkpoint both committed",
            probes=probes,
        )
    end_step = expected[index]
    engine.load_checkpoint(state, start_tensors)
    for step in range(agreed_start.step, end_step):
        engine.train_step(state, step)
    digest = hashlib.sha256(engine.checkpoint_bytes(state, step=end_step)).hexdigest()
    order = state.order.segment_sha256(agreed_start.step, end_step)
    matches = [
        (
            t,
            t.commitments[index].weights_sha256 == digest
            and t.commitments[index].batch_indices_sha256 == order,
        )
        for t in (a, b)
    ]
    return _decide(
        matches,
        index,
        (agreed_start.step, end_step),
        probes,
        f"replayed segment {agreed_start.step}→{end_step} bit for bit",
    )


def _decide(
    matches: list[tuple[Trace, bool]],
    index: int,
    segment: tuple[int, int] | None,
    probes: int,
    how: str,
) -> Verdict:
    honest = tuple(t.node for t, ok in matches if ok)
    deviators = tuple(t.node for t, ok in matches if not ok)
    who = ", ".join(deviators) if deviators else "nobody"
    return Verdict(
        agreed=False,
        first_difference=index,
        segment=segment,
        honest=honest,
        deviators=deviators,
        reason=f"first difference at commitment {index}: {how}; deviated: {who}",
        probes=probes,
    )
