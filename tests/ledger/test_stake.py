"""Node stake and slashing (F1, threat I): a minimum to be dispatched to, a share slashed to the user on a
proven fraud (report hash in the memo), nothing on a crash or timeout, withdrawal after a cool-down with no
job running. Attacks beside each positive control; balances conserved throughout."""

from __future__ import annotations

import datetime as dt

import pytest

from cyxwiz.errors import ConflictError
from cyxwiz.ledger import provision
from cyxwiz.ledger.attestation import ReportBindingError, ReportVerdictError
from cyxwiz.ledger.cosign import CosignRefusedError
from cyxwiz.ledger.stake import StakeLedger, StakeLockedError, StakePolicy, StakeTooLowError
from cyxwiz.ledger.store import EscrowState
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World, backdate_unstake

STAKE = 40_000


@pytest.fixture
def staked(local_world: World) -> tuple[World, StakeLedger]:
    w = local_world
    provision.fund_wallet(
        w.chain,
        payer=w.payer,
        mint=w.mint,
        wallet=w.node.pubkey(),
        amount=STAKE,
        mint_authority=w.mint_authority,
    )
    policy = StakePolicy(minimum=30_000, slash_bps=2500, cooldown=dt.timedelta(hours=1))
    stakes = StakeLedger(ledger=w.ledger(stake_policy=policy), policy=policy)
    with pytest.raises(StakeTooLowError, match="below the minimum"):
        stakes.require(peer_id=NODE_PEER)  # not dispatched to before staking
    stakes.stake(peer_id=NODE_PEER, node=w.node, amount=STAKE)
    return w, stakes


def _job(w: World, stakes: StakeLedger, job_id: str = "job-f") -> None:
    stakes.ledger.create(job_id=job_id, user=w.user, amount=10_000)
    stakes.ledger.assign(job_id=job_id, node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)


def test_minimum_stake_gates_dispatch(staked: tuple[World, StakeLedger]) -> None:
    w, stakes = staked
    assert stakes.require(peer_id=NODE_PEER).amount == STAKE
    assert w.token(w.node) == 0 and w.chain.token_amount(stakes_account(stakes)) == STAKE
    stakes.request_unstake(peer_id=NODE_PEER)
    with pytest.raises(StakeTooLowError):  # an unstaking node is no longer dispatched to
        stakes.require(peer_id=NODE_PEER)


def stakes_account(stakes: StakeLedger) -> object:
    from solders.pubkey import Pubkey

    return Pubkey.from_string(stakes.status(peer_id=NODE_PEER).stake_account)


def test_fraud_report_slashes_the_share_to_the_user_once(staked: tuple[World, StakeLedger]) -> None:
    w, stakes = staked
    _job(w, stakes)
    stakes.ledger.refund(job_id="job-f", reason="verification proved fraud")
    fraud = w.attest("job-f", verdict="fraud", report_sha256="fa" * 32)
    record = stakes.slash(job_id="job-f", report=fraud)
    share = STAKE * 2500 // 10_000
    assert (record.amount, record.slashed) == (STAKE - share, share)
    assert w.token(w.user) == USER_FUNDS + share
    assert w.chain.token_amount(stakes_account(stakes)) == STAKE - share
    assert w.token_total("job-f") + STAKE - share == USER_FUNDS + STAKE  # supply conserved
    signature = stakes.book.slashed_for("job-f")["signature"]  # type: ignore[index]
    status = w.chain.signature_status(signature)
    assert status is not None and status.err is None
    with pytest.raises(ConflictError, match="already slashed"):
        stakes.slash(job_id="job-f", report=fraud)
    assert w.token(w.user) == USER_FUNDS + share


@pytest.mark.parametrize("verdict", ["fail", "pass"])
def test_crash_timeout_or_pass_never_slashes(staked: tuple[World, StakeLedger], verdict: str) -> None:
    w, stakes = staked
    _job(w, stakes)
    with pytest.raises(ReportVerdictError, match="fraud"):
        stakes.slash(job_id="job-f", report=w.attest("job-f", verdict=verdict))  # type: ignore[arg-type]
    assert stakes.status(peer_id=NODE_PEER).amount == STAKE and w.token(w.user) == USER_FUNDS - 10_000


def test_fraud_report_of_another_node_or_job_slashes_nothing(staked: tuple[World, StakeLedger]) -> None:
    w, stakes = staked
    _job(w, stakes)
    for overrides in ({"job_id": "job-x"}, {"node_peer_id": "12D3KooWOther"}):
        with pytest.raises(ReportBindingError):
            stakes.slash(job_id="job-f", report=w.attest("job-f", verdict="fraud", **overrides))
    assert stakes.status(peer_id=NODE_PEER).amount == STAKE


def test_verifier_refuses_a_slash_larger_than_the_share(staked: tuple[World, StakeLedger]) -> None:
    w, stakes = staked
    _job(w, stakes)
    greedy = StakeLedger(ledger=stakes.ledger, policy=StakePolicy(minimum=0, slash_bps=10_000))
    with pytest.raises(CosignRefusedError, match="configured share"):
        greedy.slash(job_id="job-f", report=w.attest("job-f", verdict="fraud"))
    assert stakes.status(peer_id=NODE_PEER).amount == STAKE
    assert w.chain.token_amount(stakes_account(stakes)) == STAKE


def test_withdraw_needs_cooldown_and_no_running_job(staked: tuple[World, StakeLedger]) -> None:
    w, stakes = staked
    with pytest.raises(StakeLockedError, match="request the unstake"):
        stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    _job(w, stakes)
    requested = stakes.request_unstake(peer_id=NODE_PEER).unstake_requested_at
    assert requested is not None
    with pytest.raises(StakeLockedError, match="cool-down ends"):
        stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    later = requested + dt.timedelta(hours=2)
    with pytest.raises(StakeLockedError, match="running"):
        stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node), now=later)
    stakes.ledger.release(job_id="job-f", node_wallet=w.node.pubkey(), report=w.attest("job-f"))
    # The ledger's own check passes now; the verifier applies the cool-down itself, on its own clock.
    with pytest.raises(StakeLockedError, match="cool-down ends"):
        stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node), now=later)
    backdate_unstake(stakes.book._engine, NODE_PEER, requested - dt.timedelta(hours=2))
    record = stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert (record.amount, record.withdrawn) == (0, True)
    assert w.token(w.node) == STAKE + 10_000


def test_upheld_dispute_slashes_through_the_verification_packages_slasher(
    staked: tuple[World, StakeLedger],
) -> None:
    """``cyxwiz.verification.dispute.settle_dispute(slasher=StakeLedger)``: the arbiter upholds the user's
    dispute (refund from the dispute escrow), then the node's stake is slashed; without an upheld
    dispute (a plain refund) a report-less slash is refused."""
    from cyxwiz.errors import ValidationError
    from cyxwiz.verification.dispute import Resolution, settle_dispute

    w, stakes = staked
    _job(w, stakes, "job-plain")
    stakes.ledger.refund(job_id="job-plain", reason="node crashed")
    with pytest.raises(ValidationError, match="upheld"):
        stakes.slash(job_id="job-plain", reason="no evidence")
    # A compromised coordinator writes an "upheld dispute" into its own escrow store: the ledger's check
    # passes, the verifier (which co-signed no arbiter's refund of this job) refuses.
    stakes.ledger.store.update_fields(
        "job-plain", allowed=[EscrowState.REFUNDED], dispute_account=str(w.user.pubkey()), resolution="refund"
    )
    with pytest.raises(CosignRefusedError, match="no dispute of this job was upheld"):
        stakes.slash(job_id="job-plain", reason="forged dispute")
    assert stakes.status(peer_id=NODE_PEER).amount == STAKE and w.token(w.user) == USER_FUNDS
    assert stakes.book.slashed_for("job-plain") is None
    _job(w, stakes, "job-d")
    stakes.ledger.dispute(job_id="job-d", reason="user: a segment does not reproduce")
    arbiter = StakeLedger(ledger=w.ledger(coordinator=None), policy=stakes.policy)
    outcome = settle_dispute(
        Resolution(upheld=True, reason="segment 3 does not reproduce"), job_id="job-d",
        escrow=arbiter.ledger, node_wallet=None, proof_ref=None, slasher=stakes,
    )  # fmt: skip
    share = STAKE * 2500 // 10_000
    assert outcome == "refund" and stakes.status(peer_id=NODE_PEER).slashed == share
    assert w.token(w.user) == USER_FUNDS + share  # both escrows refunded, plus the slashed share


def test_a_withdrawal_whose_record_a_crash_lost_is_not_sent_twice_nor_a_phantom_stake(
    staked: tuple[World, StakeLedger],
) -> None:
    """The withdrawal landed but its process died before writing it down (the row as it was before).
    Withdrawing again sends nothing; staking again counts only the new deposit, so a node cannot be
    dispatched on tokens it already took back (F1, F2)."""
    w, stakes = staked
    requested = stakes.request_unstake(peer_id=NODE_PEER).unstake_requested_at
    assert requested is not None
    backdate_unstake(stakes.book._engine, NODE_PEER, requested - dt.timedelta(hours=2))
    before = stakes.status(peer_id=NODE_PEER)
    stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert w.token(w.node) == STAKE
    stakes.book.update(NODE_PEER, amount=before.amount, withdrawn=False)  # what the crash left
    record = stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert (record.amount, record.withdrawn) == (0, True) and w.token(w.node) == STAKE
    stakes.book.update(NODE_PEER, amount=before.amount, withdrawn=False)  # lost again, then re-staked
    small = 10_000
    assert stakes.stake(peer_id=NODE_PEER, node=w.node, amount=small).amount == small
    assert w.chain.token_amount(stakes_account(stakes)) == small
    with pytest.raises(StakeTooLowError, match=f"stake {small} is below"):
        stakes.require(peer_id=NODE_PEER)  # the phantom 40,000 would have passed the 30,000 minimum
    stakes.stake(peer_id=NODE_PEER, node=w.node, amount=STAKE - small)  # positive control
    assert stakes.require(peer_id=NODE_PEER).amount == STAKE
    assert w.token(w.node) == 0 and w.token_total() + STAKE == USER_FUNDS + STAKE


def test_a_slash_pays_the_wallet_that_funded_the_escrow_not_a_rewritten_one(
    staked: tuple[World, StakeLedger],
) -> None:
    """The coordinator rewrites the job's user wallet in its store before slashing a proven fraud: the
    verifier derives the escrow from that wallet, finds another account, and refuses (F1)."""
    from solders.keypair import Keypair

    from cyxwiz.ledger import txbuild

    w, stakes = staked
    _job(w, stakes)
    stakes.ledger.refund(job_id="job-f", reason="verification proved fraud")
    fraud = w.attest("job-f", verdict="fraud", report_sha256="fa" * 32)
    thief = Keypair().pubkey()
    honest = stakes.ledger.status(job_id="job-f")
    store = stakes.ledger.store
    store.update_fields("job-f", allowed=[EscrowState.REFUNDED], user_wallet=str(thief))
    with pytest.raises(CosignRefusedError, match="wallet that funded"):
        stakes.slash(job_id="job-f", report=fraud)
    assert (w.chain.token_amount(txbuild.token_account_of(thief, w.mint)) or 0) == 0
    assert stakes.status(peer_id=NODE_PEER).amount == STAKE and stakes.book.slashed_for("job-f") is None
    store.update_fields("job-f", allowed=[EscrowState.REFUNDED], user_wallet=honest.user_wallet)
    share = STAKE * 2500 // 10_000
    assert stakes.slash(job_id="job-f", report=fraud).slashed == share  # positive control
    assert w.token(w.user) == USER_FUNDS + share


def test_a_node_owing_a_slash_cannot_withdraw_its_stake_first(staked: tuple[World, StakeLedger]) -> None:
    """Its fraud was refunded (the slash decided, not yet sent): the withdrawal waits until the sweep
    slashed; then the node gets back the rest, exactly (F1, F2)."""
    w, stakes = staked
    _job(w, stakes)
    fraud = w.attest("job-f", verdict="fraud", report_sha256="fa" * 32)
    stakes.ledger.refund(job_id="job-f", reason="verification proved fraud", report=fraud)
    requested = stakes.request_unstake(peer_id=NODE_PEER).unstake_requested_at
    assert requested is not None
    backdate_unstake(stakes.book._engine, NODE_PEER, requested - dt.timedelta(hours=2))
    with pytest.raises(StakeLockedError, match="owes 1 slash"):
        stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert w.token(w.node) == 0 and w.chain.token_amount(stakes_account(stakes)) == STAKE
    report = stakes.ledger.sweep(run_state=lambda _run: "gone")
    assert report.slashed == ["job-f"]
    share = STAKE * 2500 // 10_000
    assert stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node)).withdrawn
    assert w.token(w.node) == STAKE - share and w.token(w.user) == USER_FUNDS + share


def test_a_deposit_whose_record_a_crash_lost_still_goes_back_to_the_node(
    staked: tuple[World, StakeLedger],
) -> None:
    """The node's second deposit landed, the process died before the book counted it: the withdrawal
    returns what the account holds (and closes it), not only what the book says (F2)."""
    w, stakes = staked
    extra = 5_000
    provision.fund_wallet(
        w.chain, payer=w.payer, mint=w.mint, wallet=w.node.pubkey(), amount=extra,
        mint_authority=w.mint_authority,
    )  # fmt: skip
    before = stakes.status(peer_id=NODE_PEER)
    stakes.stake(peer_id=NODE_PEER, node=w.node, amount=extra)
    stakes.book.update(NODE_PEER, amount=before.amount)  # the record the crash lost
    requested = stakes.request_unstake(peer_id=NODE_PEER).unstake_requested_at
    assert requested is not None
    backdate_unstake(stakes.book._engine, NODE_PEER, requested - dt.timedelta(hours=2))
    assert stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node)).withdrawn
    assert w.token(w.node) == STAKE + extra and w.chain.token_amount(stakes_account(stakes)) is None
