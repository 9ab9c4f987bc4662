"""The dispute window (issue 20; SPEC F1, F2, C2): a verified release waits for the window, a dispute filed
in it moves the funds into the dispute escrow instead of paying, no dispute releases once it closed, and a
dead lifecycle's hold is finished by the sweep. Real LiteSVM ledger (in-process), real SQLite coordinator
store; only the control plane's service lookups point at them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.coordinator.holds import HoldBook
from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import ConflictError, NotFoundError, ValidationError
from cyxwiz.ids import new_job_id
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.store import EscrowState
from tasks import holds, services
from tasks.control import JobRequest
from tasks.coordinator_channel import SchedulerChannel
from tests.ledger.conftest import NODE_PEER, World, local_world, pki

__all__ = ["local_world", "pki"]

AMOUNT = 50_000
WINDOW = 60
SEGMENT = {"kind": "segment", "segment_start": 8, "reason": "does not reproduce on my machine"}


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def record(self, event: Any) -> Any:
        self.events.append(event)
        return None

    def actions(self, job_id: str) -> list[str]:
        return [e.action for e in self.events if e.resource == f"job:{job_id}"]


@dataclass
class Plane:
    world: World
    ledger: EscrowLedger
    channel: SchedulerChannel
    audit: Sink

    def held_job(self, *, user: str = "alice", window: int = WINDOW) -> tuple[str, dt.datetime]:
        """A locked, assigned, verified job whose release is held; returns (job id, closes_at)."""
        job_id = new_job_id()
        self.channel.create_job(user=user, spec={"job_type": "model"}, duration_s=60, job_id=job_id)
        self.ledger.create(job_id=job_id, user=self.world.user, amount=AMOUNT, run_id=f"run-{job_id}")
        wallet = str(self.world.node.pubkey())
        self.ledger.assign(job_id=job_id, node_wallet=wallet, node_peer_id=NODE_PEER)
        request = JobRequest(
            job_id=job_id, user=user, payment=AMOUNT, dataset="sklearn:digits", training_doc={},
            memory_mb=512, wall_seconds=60, dispute_window_s=window,
        )  # fmt: skip
        settlement = holds.hold_release(
            request,
            {"assignment": {"wallet": wallet, "peer_id": NODE_PEER}},
            {"attestation": self.world.attest(job_id)},
        )
        assert settlement["state"] == "held"
        return job_id, dt.datetime.fromisoformat(settlement["closes_at"])

    def book(self) -> HoldBook:
        return HoldBook(self.channel.store.engine)


@dataclass(frozen=True)
class _Config:
    dispatch_margin_s: int = 120
    run_silent_s: float = 60.0


@pytest.fixture
def plane(local_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Plane:
    ledger = local_world.ledger()
    channel = SchedulerChannel(store=CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'c.db'}"))
    sink = Sink()
    monkeypatch.setattr(services, "ledger", lambda: ledger)
    monkeypatch.setattr(services, "control_channel", lambda: channel)
    monkeypatch.setattr(services, "audit", lambda: sink)
    monkeypatch.setattr(services, "config", _Config)
    return Plane(world=local_world, ledger=ledger, channel=channel, audit=sink)


def test_no_dispute_releases_once_the_window_closed_and_only_once(plane: Plane) -> None:
    world = plane.world
    job_id, closes_at = plane.held_job()
    before = world.token(world.node)
    assert holds.finish_hold(job_id, now=closes_at - dt.timedelta(seconds=1)) == "held"
    assert plane.ledger.status(job_id=job_id).state is EscrowState.LOCKED, "nothing paid inside the window"
    assert plane.channel.job(job_id)["status"] == "held"
    assert plane.ledger.status(job_id=job_id).deadline >= closes_at, "no sweep refunds it meanwhile"
    assert holds.finish_hold(job_id, now=closes_at) == "released"
    assert world.token(world.node) - before == AMOUNT
    assert holds.finish_hold(job_id, now=closes_at) == "released"  # a second caller changes nothing
    assert world.token(world.node) - before == AMOUNT
    assert plane.channel.job(job_id)["status"] == "released"
    # F1: a dispute after the close is refused and moves nothing.
    with pytest.raises(ConflictError):
        plane.book().file_dispute(job_id=job_id, user_id="alice", evidence=SEGMENT, now=closes_at)
    assert "escrow.hold" in plane.audit.actions(job_id)  # the ledger audits the release itself


def test_a_dispute_in_the_window_moves_the_funds_to_the_dispute_escrow(plane: Plane) -> None:
    world = plane.world
    job_id, closes_at = plane.held_job()
    before = world.token(world.node)
    book = plane.book()
    inside = closes_at - dt.timedelta(seconds=1)
    # C2 attack: another user cannot dispute alice's job (and learns nothing of its hold).
    with pytest.raises(NotFoundError):
        book.file_dispute(job_id=job_id, user_id="mallory", evidence=SEGMENT, now=inside)
    with pytest.raises(ValidationError) as caught:
        book.file_dispute(job_id=job_id, user_id="alice", evidence={"kind": "vibes"}, now=inside)
    assert caught.value.field == "evidence.kind"
    assert book.get(job_id).state == "held"
    filed = book.file_dispute(job_id=job_id, user_id="alice", evidence=SEGMENT, now=inside)
    assert filed.state == "disputed" and filed.public()["evidence"] == SEGMENT
    with pytest.raises(ConflictError, match="already disputed"):
        book.file_dispute(job_id=job_id, user_id="alice", evidence=SEGMENT, now=inside)
    # The window's close cannot release it any more: the dispute won the compare-and-set.
    assert holds.finish_hold(job_id, now=closes_at + dt.timedelta(hours=1)) == "disputed"
    record = plane.ledger.status(job_id=job_id)
    assert record.state is EscrowState.DISPUTED and "step 8" in str(record.dispute_reason)
    assert plane.ledger.onchain_amount(job_id=job_id) == AMOUNT, "all of it in the dispute escrow"
    assert world.token(world.node) == before, "the node is not paid"
    assert plane.channel.job(job_id)["status"] == "disputed"
    assert holds.finish_hold(job_id) == "disputed"  # idempotent


def test_the_sweep_finishes_a_dead_lifecycles_hold(plane: Plane) -> None:
    """F2: the lifecycle died while waiting; the sweep leaves an open window alone, then releases."""
    world = plane.world
    released, closes_at = plane.held_job()
    disputed, _ = plane.held_job()
    plane.book().file_dispute(
        job_id=disputed, user_id="alice", evidence=SEGMENT, now=closes_at - dt.timedelta(seconds=5)
    )
    before = world.token(world.node)
    rows = holds.settle_holds(now=closes_at - dt.timedelta(seconds=1))
    assert rows == [{"job_id": disputed, "state": "disputed", "step": "dispute window closed"}]
    assert plane.ledger.status(job_id=released).state is EscrowState.LOCKED
    rows = holds.settle_holds(now=closes_at)
    assert rows == [{"job_id": released, "state": "released", "step": "dispute window closed"}]
    assert world.token(world.node) - before == AMOUNT
    assert holds.settle_holds(now=closes_at) == []


def test_await_window_returns_early_on_a_dispute(plane: Plane) -> None:
    job_id, closes_at = plane.held_job()
    clock = [closes_at - dt.timedelta(seconds=30)]

    def sleep(seconds: float) -> None:  # the user files while the lifecycle waits
        plane.book().file_dispute(job_id=job_id, user_id="alice", evidence=SEGMENT, now=clock[0])
        clock[0] += dt.timedelta(seconds=seconds)

    assert holds.await_window(job_id, sleep=sleep, clock=lambda: clock[0]) == "disputed"
    assert clock[0] < closes_at


def test_evidence_is_checked_strictly() -> None:
    from cyxwiz.coordinator.holds import check_evidence

    assert check_evidence({"kind": "segment", "segment_start": 3})["segment_start"] == 3
    for bad, field in (
        ({"kind": "segment"}, "evidence.segment_start"),
        ({"kind": "segment", "segment_start": -1}, "evidence.segment_start"),
        ({"kind": "testset", "testset_sha256": "a" * 64}, "evidence.kind"),  # picked after delivery (F1)
        ({"kind": "segment", "segment_start": 1, "testset_sha256": "a" * 64}, "evidence"),
        ({"kind": "segment", "segment_start": 1, "reason": "x" * 501}, "evidence.reason"),
    ):
        with pytest.raises(ValidationError) as caught:
            check_evidence(bad)
        assert caught.value.field == field


def test_the_ledger_sweep_never_settles_an_open_window(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """F1/F2: the lifecycle died (its run is over) while the window is open; the escrow-sweep pass neither
    releases the verified escrow early (that would skip the window) nor refunds it."""
    import tasks.sweep
    from tasks.recover import sweep_once

    monkeypatch.setattr(tasks.sweep, "lifecycle_run_state", lambda run_id, **_: "terminal")
    job_id, closes_at = plane.held_job()
    before = plane.world.token(plane.world.node)
    swept = sweep_once()
    assert job_id not in {r.job_id for r in swept["report"].released + swept["report"].refunded}
    assert plane.ledger.status(job_id=job_id).state is EscrowState.LOCKED
    assert plane.book().get(job_id).state == "held"
    assert holds.settle_holds(now=closes_at) == [
        {"job_id": job_id, "state": "released", "step": "dispute window closed"}
    ]
    assert plane.world.token(plane.world.node) - before == AMOUNT


def test_a_long_window_is_left_to_the_sweep(plane: Plane) -> None:
    """A window of days does not keep a lifecycle run waiting: it ends with the job held (F2)."""
    from flows.job_lifecycle import dispute_window

    job_id, _ = plane.held_job(window=holds.WAIT_LIMIT_S + 1)
    request = JobRequest(
        job_id=job_id, user="alice", payment=AMOUNT, dataset="sklearn:digits", training_doc={},
        memory_mb=512, wall_seconds=60, dispute_window_s=holds.WAIT_LIMIT_S + 1,
    )  # fmt: skip
    assert dispute_window.fn(request, {"state": "held"}) == {"state": "held"}
    assert plane.book().get(job_id).state == "held"
    assert plane.ledger.status(job_id=job_id).state is EscrowState.LOCKED
