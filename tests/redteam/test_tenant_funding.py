"""Funding a job that waits for it (the Prefect UI form's ``await_funding_s``), attacked through the
coordinator API (issue 16; SPEC F1, F3, C2).

A lifecycle run started without the user's signed lock holds the job row open as ``awaiting-funding``;
only its owner may hand in a lock, only that owner's exact lock of the job's payment for that job, and only
once. Same real coordinator and key-less ledger view as :mod:`tests.redteam.test_tenant_money`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cyxwiz.coordinator.store import AWAITING_FUNDING
from cyxwiz.errors import ValidationError
from cyxwiz.ids import new_job_id
from cyxwiz.ledger.client_funding import sign_funding
from tasks.channel import ControlChannel
from tasks.control import await_funding
from tests.coordinator.conftest import auth
from tests.redteam.test_tenant_money import PAYMENT, Market, _spec, market

__all__ = ["market"]  # the fixture, imported so pytest sees it here


def _waiting_job(market: Market, user: str = "alice") -> str:
    """What ``open_unfunded`` leaves: a validated spec's row, no escrow, waiting for its owner's lock."""
    record = market.env.coord.store.create_job(
        user_id=user, spec={**_spec(), "user": user}, duration_s=300, job_id=new_job_id(),
        status=AWAITING_FUNDING,
    )  # fmt: skip
    return record.job_id


def _fund(market: Market, user: str, job_id: str, funding: dict[str, Any]) -> httpx.Response:
    with market.env.client() as c:
        return c.post(
            f"/v1/jobs/{job_id}/funding", json={"funding": funding}, headers=auth(market.token(user))
        )


def _signed(
    market: Market, user: str, job_id: str, *, signer: str | None = None, amount: int = PAYMENT
) -> Any:
    terms = market.terms(user)
    return sign_funding(terms, wallet=market.wallets[signer or user], job_id=job_id, amount=amount, user=user)


def _still_waiting(market: Market, job_id: str) -> None:
    job = market.env.coord.store.job(job_id)
    assert job.status == AWAITING_FUNDING and "funding" not in job.spec
    assert market.ledger.list_escrows() == [], "nothing locked"


def test_the_owner_funds_a_waiting_job_once(market: Market) -> None:
    """Positive control: alice's own lock of the job's payment; the row moves on; a second one is 409."""
    job_id = _waiting_job(market)
    funding = _signed(market, "alice", job_id).to_dict()
    r = _fund(market, "alice", job_id, funding)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "submitted" and r.json()["spec"]["funding"] == funding
    again = _fund(market, "alice", job_id, _signed(market, "alice", job_id).to_dict())
    assert again.status_code == 409 and again.json()["rule"] == "F1", again.text
    assert market.env.coord.store.job(job_id).spec["funding"] == funding, "the first lock stays"


def test_another_user_cannot_fund_or_redirect_a_waiting_job(market: Market) -> None:
    """C2: bob hands in a lock (his own, or alice's) for alice's job: 403, audited, nothing changes."""
    job_id = _waiting_job(market)
    for funding in (_signed(market, "bob", job_id), _signed(market, "alice", job_id)):
        r = _fund(market, "bob", job_id, funding.to_dict())
        assert r.status_code == 403 and r.json()["rule"] == "C2", r.text
    denied = [e for e in market.env.audit.of_action("job.read") if e.outcome == "denied"]
    assert {e.actor_id for e in denied} == {"bob"}
    _still_waiting(market, job_id)


def test_a_wrong_lock_is_refused_before_it_is_stored(market: Market) -> None:
    """F1/F3: a lock for another job, of less than the payment, signed by another wallet, or malformed:
    422 naming the field; the job keeps waiting and nothing is locked."""
    job_id, other = _waiting_job(market), new_job_id()
    forged = _signed(market, "alice", job_id).to_dict()
    forged["wallet"] = str(market.wallets["bob"].pubkey())
    cases = [
        ("funding.job_id", _signed(market, "alice", other).to_dict()),
        ("funding.message", _signed(market, "alice", job_id, amount=PAYMENT // 5).to_dict()),
        ("funding.message", forged),  # names bob's wallet: not the lock alice's key signed
        ("funding", {"job_id": job_id}),
    ]
    for field, funding in cases:
        r = _fund(market, "alice", job_id, funding)
        assert r.status_code == 422 and r.json()["field"] == field, (field, r.text)
    _still_waiting(market, job_id)


def test_a_job_that_does_not_wait_takes_no_lock(market: Market) -> None:
    """F1: a job submitted with its lock (or ended) is not re-fundable: 409, its spec unchanged."""
    r = market.submit("alice", market.funded_spec("alice"))
    assert r.status_code == 201, r.text
    job_id, before = r.json()["job_id"], r.json()["spec"]["funding"]
    again = _fund(market, "alice", job_id, _signed(market, "alice", job_id).to_dict())
    assert again.status_code == 409, again.text
    assert market.env.coord.store.job(job_id).spec["funding"] == before


class _Channel:
    """The lifecycle's view of the job row (what :class:`SchedulerChannel` reads)."""

    def __init__(self, market: Market) -> None:
        self.store = market.env.coord.store

    def job(self, job_id: str) -> dict[str, Any]:
        record = self.store.job(job_id)
        return {"user_id": record.user_id, "status": record.status, "funding": record.spec.get("funding")}

    def set_status(self, job_id: str, status: str, *, detail: str = "") -> None:
        self.store.update_job(job_id, status=status)


def test_the_wait_is_bounded_and_ends_expired_with_nothing_locked(market: Market) -> None:
    """F1: nobody funds within the bound: the job ends ``expired`` (terminal), nothing is locked; a lock
    handed in later is refused (409). Positive control: a lock handed in meanwhile is returned."""
    channel: ControlChannel = _Channel(market)  # type: ignore[assignment]  # the two calls it makes
    job_id = _waiting_job(market)
    now = [0.0]
    with pytest.raises(ValidationError) as caught:
        await_funding(
            channel, job_id, timeout_s=3, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
        )
    assert (caught.value.field, caught.value.rule) == ("funding", "F1")
    assert market.env.coord.store.job(job_id).status == "expired"
    assert market.ledger.list_escrows() == []
    late = _fund(market, "alice", job_id, _signed(market, "alice", job_id).to_dict())
    assert late.status_code == 409, late.text

    waiting = _waiting_job(market)
    funding = _signed(market, "alice", waiting).to_dict()

    def hand_in(seconds: float) -> None:
        now[0] += seconds
        assert _fund(market, "alice", waiting, funding).status_code == 200

    assert await_funding(channel, waiting, timeout_s=30, clock=lambda: now[0], sleep=hand_in) == funding
