"""Redundant mode's lifecycle rules over a real coordinator store (issue 20; SPEC F1, C2, A5): two distinct
eligible nodes or a refusal before any escrow, and a second share's job id that never takes over a job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import AuthorizationError, ConflictError, ValidationError
from cyxwiz.ledger.embedded import DemoLedger
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from infra.demo import REFERENCE_JOB
from tasks import redundant, services
from tasks.control import JobRequest, parse_job_request
from tasks.coordinator_channel import SchedulerChannel
from tests.flows.test_coordinator_channel import WALLETS, _register
from tests.ledger.conftest import demo, ledger_service, pki

__all__ = ["demo", "ledger_service", "pki"]

FIRST, SECOND = "job-" + "a" * 20, "job-" + "b" * 20


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SchedulerChannel, DevPKI]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1", "node-2", "node-3"))
    store = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'c.db'}")
    channel = SchedulerChannel(store=store, node_wallets=dict(WALLETS), crl=pki.crl)
    monkeypatch.setattr(services, "control_channel", lambda: channel)
    return channel, pki


def request(user: str = "alice") -> JobRequest:
    spec = {**REFERENCE_JOB, "user": user, "verification": {"mode": "redundant"}}
    return parse_job_request({**spec, "replica_funding": {"job_id": SECOND}}, job_id=FIRST)


def test_two_distinct_eligible_nodes_or_a_refusal(plane: tuple[SchedulerChannel, DevPKI]) -> None:
    channel, pki = plane
    _register(channel.store, pki, "node-1")
    for pins in ({}, {"node": "node-1", "replica_node": "node-1"}, {"replica_node": "node-2"}):
        with pytest.raises(ValidationError) as caught:
            redundant.require_two_nodes(**pins)
        assert (caught.value.field, caught.value.rule) == ("verification.mode", "F1")
    _register(channel.store, pki, "node-2")
    redundant.require_two_nodes()  # positive control
    redundant.require_two_nodes(node="node-1", replica_node="node-2")
    with pytest.raises(ValidationError):
        redundant.require_two_nodes(node="node-2", replica_node="node-2")


def test_the_second_share_never_takes_over_an_existing_job(plane: tuple[SchedulerChannel, DevPKI]) -> None:
    channel, pki = plane
    redundant.ensure_replica_row(request())
    assert channel.job(SECOND)["user_id"] == "alice"
    redundant.ensure_replica_row(request())  # the same lifecycle retried: its own unassigned row
    # Attack: name one's own job a node is already working on as the "second share".
    node = _register(channel.store, pki, "node-1")
    channel.store.assign_job(SECOND, node)
    with pytest.raises(ConflictError) as caught:
        redundant.ensure_replica_row(request())
    assert caught.value.field == "replica_funding.job_id"
    assert channel.job(SECOND)["node_id"] == node, "the running job is untouched"
    # Attack: name another user's job.
    with pytest.raises(AuthorizationError):
        redundant.ensure_replica_row(request(user="mallory"))


def test_both_signed_locks_are_checked_before_either_is_sent(
    demo: DemoLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F1: a second lock that is not the user's exact lock for the second share (another amount, or signed
    for the first share's id) refuses the job before the first escrow exists."""
    from cyxwiz.ledger.client_funding import FundingError, sign_funding
    from cyxwiz.ledger.view import LedgerView

    monkeypatch.setattr(services, "config", lambda: _Ledger(ledger_config=demo.config_path))
    view = LedgerView.from_config(demo.config)
    terms = view.funding_terms()
    view.close()
    share = request()
    payment = share.payment

    def funded(replica_job: str, amount: int) -> dict[str, object]:
        lock = sign_funding(terms, wallet=demo.user, job_id=FIRST, amount=payment, user="alice")
        second = sign_funding(terms, wallet=demo.user, job_id=replica_job, amount=amount, user="alice")
        return {"funding": lock.to_dict(), "replica_funding": second.to_dict()}

    redundant.check_fundings(share, funded(SECOND, payment))  # positive control
    with pytest.raises(FundingError) as caught:
        redundant.check_fundings(share, funded(SECOND, payment - 1))
    assert caught.value.field == "funding.message"
    with pytest.raises(ValidationError) as caught:
        redundant.check_fundings(share, funded(FIRST, payment))
    assert caught.value.field == "funding.job_id"
    assert LedgerView.from_config(demo.config).escrows([FIRST, SECOND]) == []


@dataclass(frozen=True)
class _Ledger:
    ledger_config: Path
