"""User-signed escrow funding: the control plane locks only the exact lock the user's wallet signed (F1, C2).

Each attack has its honest control beside it; every refusal leaves no escrow row and moves no token.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey

from cyxwiz.errors import CyxwizError, NotFoundError, PaymentTooLowError, ValidationError
from cyxwiz.ids import new_job_id
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.client_funding import (
    Funding,
    FundingError,
    FundingTerms,
    check_funding,
    escrow_of,
    lock_signed,
    sign_funding,
    terms_from_chain,
)
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.store import EscrowState
from cyxwiz.ledger.view import LedgerView
from tests.ledger.conftest import MINIMUM, USER_FUNDS, World

AMOUNT = 5 * MINIMUM


def _job() -> str:
    return new_job_id()


def _terms(world: World) -> FundingTerms:
    """What ``GET /v1/wallet/terms`` serves: public values only."""
    return terms_from_chain(
        world.chain, mint=world.mint, decimals=6, multisig=world.multisig, payer=world.payer.pubkey(),
        minimum_payment=MINIMUM,
    )  # fmt: skip


def _lock(ledger: EscrowLedger, funding: Funding, *, user: str = "alice", amount: int = AMOUNT) -> Any:
    return lock_signed(ledger, funding, amount=amount, user=user)


def _nothing_created(world: World, ledger: EscrowLedger, job_id: str) -> None:
    with pytest.raises(NotFoundError):
        ledger.status(job_id=job_id)
    assert world.token(world.user) == USER_FUNDS


def _refused_everywhere(
    world: World, ledger: EscrowLedger, funding: Funding, *, job_id: str, user: str
) -> None:
    """Refused at the door (no key) and by the ledger itself; nothing locked."""
    with pytest.raises(FundingError):
        check_funding(funding, terms=_terms(world), job_id=job_id, amount=AMOUNT, user=user)
    with pytest.raises(CyxwizError):
        lock_signed(ledger, Funding(**{**funding.__dict__, "job_id": job_id}), amount=AMOUNT, user=user)
    _nothing_created(world, ledger, job_id)


def test_user_signed_lock_then_release_pays_the_assigned_node(local_world: World) -> None:
    """Positive control (F1): the ledger locks from the user's signed message, with no user key."""
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    terms = _terms(world)
    funding = sign_funding(terms, wallet=world.user, job_id=job_id, amount=AMOUNT, user="alice")
    check_funding(funding, terms=terms, job_id=job_id, amount=AMOUNT, user="alice")  # the door agrees
    record = _lock(ledger, funding)
    assert record.state == EscrowState.LOCKED
    assert record.user_wallet == str(world.user.pubkey())
    assert record.escrow_account == str(escrow_of(terms, job_id, wallet=world.user.pubkey()))
    assert world.chain.token_amount(Pubkey.from_string(record.escrow_account)) == AMOUNT
    assert world.token(world.user) == USER_FUNDS - AMOUNT


def test_refund_of_a_user_signed_lock_returns_to_that_wallet(local_world: World) -> None:
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    _lock(ledger, sign_funding(_terms(world), wallet=world.user, job_id=job_id, amount=AMOUNT, user="alice"))
    ledger.refund(job_id=job_id, reason="test")
    assert world.token(world.user) == USER_FUNDS


def test_funding_for_another_job_is_refused(local_world: World) -> None:
    """A lock signed for job A cannot fund job B (the seed and memo bind the job)."""
    world = local_world
    ledger = world.ledger()
    signed_for, target = _job(), _job()
    funding = sign_funding(_terms(world), wallet=world.user, job_id=signed_for, amount=AMOUNT, user="alice")
    with pytest.raises(FundingError) as err:
        check_funding(funding, terms=_terms(world), job_id=target, amount=AMOUNT, user="alice")
    assert err.value.field == "funding.job_id"
    _refused_everywhere(world, ledger, funding, job_id=target, user="alice")


def test_underpaying_lock_is_refused(local_world: World) -> None:
    """F3: a lock of less than the job's payment is not this job's lock."""
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    short = sign_funding(_terms(world), wallet=world.user, job_id=job_id, amount=MINIMUM, user="alice")
    _refused_everywhere(world, ledger, short, job_id=job_id, user="alice")
    with pytest.raises(PaymentTooLowError):
        sign_funding(_terms(world), wallet=world.user, job_id=job_id, amount=MINIMUM - 1, user="alice")


def test_lock_under_another_authority_is_refused(local_world: World) -> None:
    """An escrow owned by a multisig the user controls would let them take the money back."""
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    terms = _terms(world)
    forged_terms = FundingTerms(**{**terms.to_dict(), "multisig": str(Keypair().pubkey())})
    funding = sign_funding(forged_terms, wallet=world.user, job_id=job_id, amount=AMOUNT, user="alice")
    _refused_everywhere(world, ledger, funding, job_id=job_id, user="alice")


def test_extra_instruction_foreign_wallet_or_bad_signature_is_refused(local_world: World) -> None:
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    terms = _terms(world)
    honest = sign_funding(terms, wallet=world.user, job_id=job_id, amount=AMOUNT, user="alice")
    parsed = Message.from_bytes(honest.message)
    extra = [*txbuild.create_escrow(
        payer=world.payer.pubkey(), user=world.user.pubkey(),
        user_token=txbuild.token_account_of(world.user.pubkey(), world.mint), mint=world.mint, decimals=6,
        multisig=world.multisig, job_id=job_id, amount=AMOUNT, rent=terms.rent, owner="alice",
    ), txbuild.memo(world.user.pubkey(), "and one more thing")]  # fmt: skip
    padded = bytes(Message.new_with_blockhash(extra, world.payer.pubkey(), parsed.recent_blockhash))
    forged = Funding(
        job_id=job_id, wallet=honest.wallet, message=padded, signature=str(world.user.sign_message(padded))
    )
    _refused_everywhere(world, ledger, forged, job_id=job_id, user="alice")
    other = Keypair()  # names another wallet than the one that signed
    _refused_everywhere(
        world,
        ledger,
        Funding(**{**honest.__dict__, "wallet": str(other.pubkey())}),
        job_id=job_id,
        user="alice",
    )
    wrong_key = Funding(**{**honest.__dict__, "signature": str(other.sign_message(honest.message))})
    _refused_everywhere(world, ledger, wrong_key, job_id=job_id, user="alice")


def test_a_lock_cannot_be_used_twice(local_world: World) -> None:
    """F2: the same signed message replayed for the same job finds the escrow already there."""
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    funding = sign_funding(_terms(world), wallet=world.user, job_id=job_id, amount=AMOUNT, user="alice")
    _lock(ledger, funding)
    with pytest.raises(CyxwizError):
        _lock(ledger, funding)
    assert world.token(world.user) == USER_FUNDS - AMOUNT


def test_funding_document_parsing_refuses_junk() -> None:
    wallet = str(Keypair().pubkey())
    sig = str(Keypair().sign_message(b"x"))
    for bad in (
        None,
        {"job_id": "job-0123456789abcdef0123", "wallet": wallet, "message": "AA=="},
        {"job_id": "../etc", "wallet": wallet, "message": "AA==", "signature": sig},
        {"job_id": "job-0123456789abcdef0123", "wallet": "nope", "message": "AA==", "signature": sig},
        {"job_id": "job-0123456789abcdef0123", "wallet": wallet, "message": "%%%", "signature": sig},
        {"job_id": "job-0123456789abcdef0123", "wallet": wallet, "message": "A" * 4000, "signature": sig},
        {"job_id": "job-0123456789abcdef0123", "wallet": wallet, "message": "AA==", "signature": "nope"},
    ):
        with pytest.raises(ValidationError):
            Funding.from_dict(bad)
    good = {"job_id": "job-0123456789abcdef0123", "wallet": wallet, "message": "AAAA", "signature": sig}
    assert Funding.from_dict(good).to_dict()["message"] == base64.b64encode(b"\0\0\0").decode()


def test_view_reads_balances_and_escrows_with_no_key(local_world: World) -> None:
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    _lock(ledger, sign_funding(_terms(world), wallet=world.user, job_id=job_id, amount=AMOUNT, user="alice"))
    view = LedgerView(
        chain=world.chain, store=ledger.store, mint=world.mint, decimals=6, multisig=world.multisig,
        payer=world.payer.pubkey(), minimum_payment=MINIMUM,
    )  # fmt: skip
    assert view.balance(world.user.pubkey()) == USER_FUNDS - AMOUNT
    assert [r.job_id for r in view.escrows([job_id, _job()])] == [job_id]
    assert view.funding_terms().payer == str(world.payer.pubkey())


def test_another_users_signed_lock_is_not_this_users(local_world: World) -> None:
    """C2: the submitter's id is in the signed memo, so a message alice signed cannot fund bob's job."""
    world = local_world
    ledger = world.ledger()
    job_id = _job()
    alices = sign_funding(_terms(world), wallet=world.user, job_id=job_id, amount=AMOUNT, user="alice")
    _refused_everywhere(world, ledger, alices, job_id=job_id, user="bob")
    assert _lock(ledger, alices, user="alice").amount == AMOUNT
