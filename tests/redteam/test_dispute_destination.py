"""The arbiter's refund of a disputed escrow goes back only to the wallet that funded it (issue 17; SPEC
F1, threat I "payment fraud").

The attacker writes the escrow store (it holds the coordinator's database); the arbiter is honest but reads
that store. After the dispute moved the funds into the dispute escrow, the attacker rewrites the job's user
wallet — alone, with the escrow account derived from its own wallet, and with the dispute account too — and
the arbiter resolves "refund". The dispute escrow's address, like the escrow's, is derived from the funding
wallet, so the verifier co-signs no move of it to another wallet, and a row that names the attacker's
accounts throughout names a dispute escrow into which nothing was moved: the chain refuses it. Every time
the real dispute escrow keeps the funds and the attacker gets nothing; the honest resolve then refunds the
user (positive control), balances conserved. Real ledger service: LiteSVM behind JSON-RPC.
"""

from __future__ import annotations

import pytest
from solders.pubkey import Pubkey

from cyxwiz.errors import EscrowError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.cosign import CosignRefusedError
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.store import EscrowState
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World

JOB = "job-disputed"
AMOUNT = 10_000


def _disputed(w: World) -> EscrowLedger:
    ledger = w.ledger()
    ledger.create(job_id=JOB, user=w.user, amount=AMOUNT)
    ledger.assign(job_id=JOB, node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    record = ledger.dispute(job_id=JOB, reason="user: the metrics look fabricated")
    real = txbuild.dispute_address(w.payer.pubkey(), JOB, w.user.pubkey())
    assert (record.state, record.dispute_account) == (EscrowState.DISPUTED, str(real))
    return ledger


def _rewrite(ledger: EscrowLedger, **values: str) -> None:
    ledger.store.update_fields(JOB, allowed=[EscrowState.DISPUTED], **values)


def _held(w: World) -> None:
    real = txbuild.dispute_address(w.payer.pubkey(), JOB, w.user.pubkey())
    assert w.chain.token_amount(real) == AMOUNT
    assert w.token(w.other_node) == 0 and w.token(w.user) == USER_FUNDS - AMOUNT
    assert w.token_total(JOB) == USER_FUNDS


def test_a_rewritten_user_wallet_gets_no_arbiters_refund(money_world: World) -> None:
    w = money_world
    ledger = _disputed(w)
    honest = ledger.status(job_id=JOB)
    arbiter = w.ledger(coordinator=None)
    thief = w.other_node.pubkey()
    forged_escrow = str(txbuild.escrow_address(w.payer.pubkey(), JOB, thief))
    for values, why in (
        ({"user_wallet": str(thief)}, "wallet that funded the escrow"),
        ({"user_wallet": str(thief), "escrow_account": forged_escrow}, "allowed recipient"),
    ):
        _rewrite(ledger, **values)
        with pytest.raises(CosignRefusedError, match=why) as refused:
            arbiter.resolve(job_id=JOB, outcome="refund")
        assert refused.value.rule == "F1"
        assert ledger.status(job_id=JOB).state is EscrowState.DISPUTED  # nothing half-moved
        _held(w)
    _rewrite(ledger, user_wallet=honest.user_wallet, escrow_account=honest.escrow_account)
    record = arbiter.resolve(job_id=JOB, outcome="refund")  # positive control
    assert (record.state, record.resolution) == (EscrowState.REFUNDED, "refund")
    assert w.token(w.user) == USER_FUNDS and w.token(w.other_node) == 0
    assert w.token_total(JOB) == USER_FUNDS


def test_a_row_naming_the_attackers_accounts_throughout_moves_nothing(money_world: World) -> None:
    """User wallet, escrow and dispute account all the attacker's: the verifier's rule holds (each derived
    from the next), but that dispute escrow never received anything, and the chain refuses the move."""
    w = money_world
    ledger = _disputed(w)
    thief: Pubkey = w.other_node.pubkey()
    _rewrite(
        ledger, user_wallet=str(thief),
        escrow_account=str(txbuild.escrow_address(w.payer.pubkey(), JOB, thief)),
        dispute_account=str(txbuild.dispute_address(w.payer.pubkey(), JOB, thief)),
    )  # fmt: skip
    with pytest.raises(EscrowError, match="the chain refused the refund transaction"):
        w.ledger(coordinator=None).resolve(job_id=JOB, outcome="refund")
    assert ledger.status(job_id=JOB).state is EscrowState.DISPUTED
    _held(w)


def test_a_resolve_co_signed_for_a_made_up_record_never_lands_so_it_slashes_nothing(
    money_world: World,
) -> None:
    """The attacker makes a refunded job look disputed, its accounts its own, and has the verifier co-sign
    the "arbiter's" refund with a key that is not the arbiter's; the chain refuses it. It then marks the
    dispute upheld and asks for the slash the upheld dispute would allow, paying itself: the verifier
    finds that refund never landed and refuses. The real upheld dispute (positive control) slashes the
    share to the user who funded the escrow (F1, F2, threat I)."""
    from solders.keypair import Keypair

    from cyxwiz.ledger import provision
    from cyxwiz.ledger.stake import StakeLedger, StakePolicy

    w = money_world
    stake = 40_000
    provision.fund_wallet(
        w.chain, payer=w.payer, mint=w.mint, wallet=w.node.pubkey(), amount=stake,
        mint_authority=w.mint_authority,
    )  # fmt: skip
    policy = StakePolicy(minimum=0, slash_bps=2500)
    stakes = StakeLedger(ledger=w.ledger(stake_policy=policy), policy=policy)
    stakes.stake(peer_id=NODE_PEER, node=w.node, amount=stake)
    ledger = stakes.ledger
    ledger.create(job_id="job-plain", user=w.user, amount=AMOUNT)
    ledger.assign(job_id="job-plain", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    ledger.refund(job_id="job-plain", reason="the node crashed")  # not the node's fault: no slash
    thief = w.other_node.pubkey()
    forged = {
        "user_wallet": str(thief),
        "escrow_account": str(txbuild.escrow_address(w.payer.pubkey(), "job-plain", thief)),
        "dispute_account": str(txbuild.dispute_address(w.payer.pubkey(), "job-plain", thief)),
    }
    ledger.store.update_fields(
        "job-plain", allowed=[EscrowState.REFUNDED], state=EscrowState.DISPUTED, **forged
    )
    with pytest.raises(EscrowError, match="the chain refused"):
        w.ledger(arbiter=Keypair()).resolve(job_id="job-plain", outcome="refund")  # co-signed, never lands
    attempt = [i for i in ledger.store.intents("job-plain") if i.kind == "refund"][-1]
    ledger.store.update_fields(
        "job-plain", allowed=[EscrowState.DISPUTED], state=EscrowState.REFUNDED, resolution="refund",
        settle_signature=attempt.signature,
    )  # fmt: skip
    with pytest.raises(CosignRefusedError, match="the arbiter's refund did not land") as refused:
        stakes.slash(job_id="job-plain", reason="forged upheld dispute")
    assert refused.value.rule == "F1"
    landed = next(i for i in ledger.store.intents("job-plain") if i.kind == "refund")  # the plain refund
    ledger.store.update_fields("job-plain", allowed=[EscrowState.REFUNDED], settle_signature=landed.signature)
    with pytest.raises(CosignRefusedError, match="co-signed no such refund"):
        stakes.slash(job_id="job-plain", reason="a landed refund, but no arbiter's")
    assert w.token(thief) == 0 and stakes.status(peer_id=NODE_PEER).amount == stake
    assert stakes.book.slashed_for("job-plain") is None
    # Positive control: a dispute the arbiter really upheld.
    _disputed(w)
    w.ledger(coordinator=None).resolve(job_id=JOB, outcome="refund")
    share = stake * 2500 // 10_000
    assert stakes.slash(job_id=JOB, reason="upheld: segment 3 does not reproduce").slashed == share
    assert w.token(w.user) == USER_FUNDS + share and w.token(thief) == 0
