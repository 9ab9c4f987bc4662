"""A lock funded by the user's own client (F1, F3): the control plane never holds the user's key.

``funding_message`` is what the client signs; ``create_signed`` takes it back only when it is exactly the
lock of that amount, from that wallet, for that job, signed by that wallet. Each attack: the precise
refusal, no escrow row, no token moved.
"""

from __future__ import annotations

import pytest
from solders.keypair import Keypair

from cyxwiz.errors import AuthorizationError, EscrowError, NotFoundError
from cyxwiz.ledger.store import EscrowState
from tests.ledger.conftest import USER_FUNDS, World


def test_user_signed_lock_and_its_forgeries(local_world: World) -> None:
    w = local_world
    ledger = w.ledger()
    message = ledger.funding_message(job_id="job-u", user_wallet=w.user.pubkey(), amount=7_000)
    other = ledger.funding_message(job_id="job-u", user_wallet=w.user.pubkey(), amount=70_000)
    attacks = [
        # the signed message locks 70,000 while the request claims 7,000
        (dict(message=other, user_signature=w.user.sign_message(other)), EscrowError, "not the lock"),
        # a signature by someone else over the right message
        (dict(message=message, user_signature=Keypair().sign_message(message)), AuthorizationError, "verify"),
        (dict(message=message, user_signature="not-a-signature"), AuthorizationError, "base58"),
        (dict(message=b"garbage", user_signature=w.user.sign_message(message)), EscrowError, "parse"),
    ]
    for kwargs, error, match in attacks:
        with pytest.raises(error, match=match):
            ledger.create_signed(job_id="job-u", user_wallet=w.user.pubkey(), amount=7_000, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(NotFoundError):
            ledger.status(job_id="job-u")
    assert w.token(w.user) == USER_FUNDS
    record = ledger.create_signed(
        job_id="job-u", user_wallet=str(w.user.pubkey()), amount=7_000, message=message,
        user_signature=str(w.user.sign_message(message)),
    )  # fmt: skip
    assert record.state is EscrowState.LOCKED and w.token(w.user) == USER_FUNDS - 7_000
