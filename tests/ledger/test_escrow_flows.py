"""Escrow happy paths and fraud attempts (F1–F3, threat: payment fraud).

Each attack asserts the precise refusal and that no balance moved. The ``world`` fixture runs every test
on in-process LiteSVM and through the local ledger service over JSON-RPC (the real solana-py path).
"""

from __future__ import annotations

import pytest
from solders.keypair import Keypair

from cyxwiz.errors import EscrowStateError, NotFoundError, PaymentTooLowError, ValidationError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.chain import TransactionRejectedError
from cyxwiz.ledger.records import MissingSignatureError, WrongRecipientError
from cyxwiz.ledger.store import EscrowState, IntentStatus
from tests.ledger.conftest import MINIMUM, NODE_PEER, USER_FUNDS, World


def _locked(w: World, job_id: str = "job-a", amount: int = 10_000) -> None:
    ledger = w.ledger()
    ledger.create(job_id=job_id, user=w.user, amount=amount)
    ledger.assign(job_id=job_id, node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)


def _snapshot(w: World, *jobs: str) -> tuple[int, int, int, int]:
    escrow = sum(
        (w.chain.token_amount(txbuild.escrow_address(w.payer.pubkey(), j, w.user.pubkey())) or 0)
        + (w.chain.token_amount(txbuild.dispute_address(w.payer.pubkey(), j, w.user.pubkey())) or 0)
        for j in jobs
    )
    return w.token(w.user), w.token(w.node), w.token(w.other_node), escrow


def test_dispute_then_resolve_release(world: World) -> None:
    lamports = world.lamport_total("job-a")
    _locked(world)
    ledger = world.ledger()
    record = ledger.dispute(job_id="job-a", reason="node claims completion, user disagrees")
    assert record.state is EscrowState.DISPUTED
    # While disputed nothing but the arbiter's resolve moves it.
    with pytest.raises(EscrowStateError, match="disputed"):
        ledger.release(job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a"))
    with pytest.raises(EscrowStateError, match="disputed"):
        ledger.refund(job_id="job-a")
    record = ledger.resolve(job_id="job-a", outcome="release")
    assert (record.state, record.resolution) == (EscrowState.RELEASED, "release")
    assert _snapshot(world, "job-a") == (USER_FUNDS - 10_000, 10_000, 0, 0)
    assert world.token_total("job-a") == USER_FUNDS
    assert world.lamport_total("job-a") + world.fees(ledger) == lamports  # fees of create + release


def test_dispute_then_resolve_refund(world: World) -> None:
    _locked(world)
    ledger = world.ledger()
    ledger.dispute(job_id="job-a", reason="training never started")
    record = ledger.resolve(job_id="job-a", outcome="refund")
    assert (record.state, record.resolution) == (EscrowState.REFUNDED, "refund")
    assert _snapshot(world, "job-a") == (USER_FUNDS, 0, 0, 0)


def test_resolve_needs_the_arbiter_key(world: World) -> None:
    _locked(world)
    control_plane = world.ledger(arbiter=None)
    control_plane.dispute(job_id="job-a", reason="contested")
    with pytest.raises(MissingSignatureError, match="arbiter"):
        control_plane.resolve(job_id="job-a", outcome="release")
    assert control_plane.status(job_id="job-a").state is EscrowState.DISPUTED
    assert _snapshot(world, "job-a") == (USER_FUNDS - 10_000, 0, 0, 10_000)


def test_release_twice_is_refused(world: World) -> None:
    _locked(world)
    ledger = world.ledger()
    ledger.release(job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a"))
    before = _snapshot(world, "job-a")
    with pytest.raises(EscrowStateError, match="already released"):
        ledger.release(job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a"))
    assert _snapshot(world, "job-a") == before


def test_release_after_refund_and_refund_after_release_are_refused(world: World) -> None:
    _locked(world, "job-r")
    _locked(world, "job-s")
    ledger = world.ledger()
    ledger.refund(job_id="job-r")
    ledger.release(job_id="job-s", node_wallet=world.node.pubkey(), report=world.attest("job-s"))
    before = _snapshot(world, "job-r", "job-s")
    with pytest.raises(EscrowStateError, match="already refunded"):
        ledger.release(job_id="job-r", node_wallet=world.node.pubkey(), report=world.attest("job-r"))
    with pytest.raises(EscrowStateError, match="already released"):
        ledger.refund(job_id="job-s")
    assert _snapshot(world, "job-r", "job-s") == before


def test_release_without_verifier_signature_is_refused(world: World) -> None:
    _locked(world)
    coordinator_only = world.ledger(verifier=None)
    with pytest.raises(MissingSignatureError, match="verifier"):
        coordinator_only.release(
            job_id="job-a", node_wallet=world.node.pubkey(), report=world.attest("job-a")
        )
    assert coordinator_only.status(job_id="job-a").state is EscrowState.LOCKED
    assert _snapshot(world, "job-a") == (USER_FUNDS - 10_000, 0, 0, 10_000)


def test_chain_itself_refuses_a_release_signed_by_one_authority(world: World) -> None:
    """Bypass the ledger: a transaction signed by the coordinator alone (a stolen key) fails on chain."""
    _locked(world)
    before = _snapshot(world, "job-a")
    instructions = txbuild.settle_escrow(
        payer=world.payer.pubkey(),
        escrow=txbuild.escrow_address(world.payer.pubkey(), "job-a", world.user.pubkey()),
        mint=world.mint,
        decimals=6,
        multisig=world.multisig,
        recipient_wallet=world.other_node.pubkey(),
        amount=10_000,
        authority_signers=[world.coordinator.pubkey()],
        memo_text="theft",
    )
    blockhash, _ = world.chain.latest_blockhash()
    tx = txbuild.sign(instructions, payer=world.payer, signers=[world.coordinator], blockhash=blockhash)
    with pytest.raises(TransactionRejectedError, match="MissingRequiredSignature"):
        world.chain.send_raw(bytes(tx))
    assert _snapshot(world, "job-a") == before


def test_release_to_another_wallet_is_refused(world: World) -> None:
    _locked(world)
    ledger = world.ledger()
    with pytest.raises(WrongRecipientError, match="assigned node"):
        ledger.release(job_id="job-a", node_wallet=world.other_node.pubkey(), report=world.attest("job-a"))
    assert ledger.status(job_id="job-a").state is EscrowState.LOCKED
    assert _snapshot(world, "job-a") == (USER_FUNDS - 10_000, 0, 0, 10_000)


def test_release_of_another_jobs_escrow_is_refused(world: World) -> None:
    """The node assigned to job-a asks to be paid from job-b's escrow (assigned to another node)."""
    _locked(world, "job-a")
    ledger = world.ledger()
    ledger.create(job_id="job-b", user=world.user, amount=20_000)
    ledger.assign(job_id="job-b", node_wallet=world.other_node.pubkey())
    before = _snapshot(world, "job-a", "job-b")
    with pytest.raises(WrongRecipientError):
        ledger.release(job_id="job-b", node_wallet=world.node.pubkey(), report=world.attest("job-b"))
    with pytest.raises(NotFoundError):
        ledger.release(job_id="job-zzz", node_wallet=world.node.pubkey(), proof_ref="p1")
    assert _snapshot(world, "job-a", "job-b") == before


@pytest.mark.parametrize(
    ("amount", "error", "match"),
    [
        (2**64, ValidationError, "u64"),
        (-5, ValidationError, "positive"),
        (0, ValidationError, "positive"),
        (MINIMUM - 1, PaymentTooLowError, "minimum"),
        (1.5, ValidationError, "integer"),
        (True, ValidationError, "integer"),
        ("1000", ValidationError, "integer"),
    ],
)
def test_bad_amounts_are_refused_and_nothing_is_created(
    world: World, amount: object, error: type[Exception], match: str
) -> None:
    ledger = world.ledger()
    with pytest.raises(error, match=match) as info:
        ledger.create(job_id="job-x", user=world.user, amount=amount)  # type: ignore[arg-type]
    assert getattr(info.value, "field", None) == "amount"
    with pytest.raises(NotFoundError):
        ledger.status(job_id="job-x")
    assert world.token(world.user) == USER_FUNDS


def test_user_without_funds_gets_a_clear_refusal_and_can_retry(world: World) -> None:
    ledger = world.ledger()
    pauper = Keypair()
    world_fund = world.chain.airdrop
    world_fund(pauper.pubkey(), 10_000_000)
    with pytest.raises(Exception, match="refused the create"):
        ledger.create(job_id="job-p", user=pauper, amount=5_000)
    assert ledger.status(job_id="job-p").state is EscrowState.VOID
    record = ledger.create(job_id="job-p", user=world.user, amount=5_000)  # a void escrow may be funded again
    assert record.state is EscrowState.LOCKED


def test_replayed_transactions_are_refused(world: World) -> None:
    _locked(world)
    ledger = world.ledger()
    create_tx = ledger.store.intents("job-a", status=IntentStatus.CONFIRMED)[0].tx
    before = _snapshot(world, "job-a")
    with pytest.raises(TransactionRejectedError, match="AlreadyProcessed"):
        world.chain.send_raw(create_tx)  # the user's funding transfer, replayed byte for byte
    # A release signed now but held back until its blockhash expired (e.g. by a man in the middle).
    instructions = txbuild.settle_escrow(
        payer=world.payer.pubkey(),
        escrow=txbuild.escrow_address(world.payer.pubkey(), "job-a", world.user.pubkey()),
        mint=world.mint,
        decimals=6,
        multisig=world.multisig,
        recipient_wallet=world.node.pubkey(),
        amount=10_000,
        authority_signers=[world.coordinator.pubkey(), world.verifier.pubkey()],
        memo_text="held back",
    )
    blockhash, _ = world.chain.latest_blockhash()
    held = txbuild.sign(
        instructions, payer=world.payer, signers=[world.coordinator, world.verifier], blockhash=blockhash
    )
    world.expire_blockhash()
    with pytest.raises(TransactionRejectedError, match="BlockhashNotFound"):
        world.chain.send_raw(bytes(held))
    assert _snapshot(world, "job-a") == before
    assert ledger.status(job_id="job-a").state is EscrowState.LOCKED


def test_duplicate_create_is_refused(world: World) -> None:
    _locked(world)
    with pytest.raises(Exception, match="already exists"):
        world.ledger().create(job_id="job-a", user=world.user, amount=10_000)
    assert world.token(world.user) == USER_FUNDS - 10_000


def test_disputed_funds_need_the_arbiter_on_chain(world: World) -> None:
    """F1: a dispute moves the funds into the dispute escrow (2-of-2 arbiter + verifier). The coordinator
    and verifier keys together, bypassing the ledger, are refused by the chain itself; the arbiter's
    resolve (positive control) then settles it."""
    _locked(world)
    ledger = world.ledger()
    record = ledger.dispute(job_id="job-a", reason="user reports fabricated metrics")
    dispute = txbuild.dispute_address(world.payer.pubkey(), "job-a", world.user.pubkey())
    assert (record.state, record.dispute_account) == (EscrowState.DISPUTED, str(dispute))
    assert (
        world.chain.token_amount(txbuild.escrow_address(world.payer.pubkey(), "job-a", world.user.pubkey()))
        is None
    )
    assert world.chain.token_amount(dispute) == 10_000
    before = _snapshot(world, "job-a")
    for multisig in (world.dispute_multisig, world.multisig):
        instructions = txbuild.settle_escrow(
            payer=world.payer.pubkey(), escrow=dispute, mint=world.mint, decimals=6, multisig=multisig,
            recipient_wallet=world.node.pubkey(), amount=10_000,
            authority_signers=[world.coordinator.pubkey(), world.verifier.pubkey()], memo_text="collusion",
        )  # fmt: skip
        blockhash, _ = world.chain.latest_blockhash()
        tx = txbuild.sign(
            instructions, payer=world.payer, signers=[world.coordinator, world.verifier], blockhash=blockhash
        )
        expected = (
            "MissingRequiredSignature" if multisig == world.dispute_multisig else "OwnerMismatch|Custom"
        )
        with pytest.raises(TransactionRejectedError, match=expected):
            world.chain.send_raw(bytes(tx))
    assert _snapshot(world, "job-a") == before
    # The control plane's ledger (no arbiter key) cannot resolve either.
    with pytest.raises(MissingSignatureError, match="arbiter"):
        world.ledger(arbiter=None).resolve(job_id="job-a", outcome="refund")
    done = world.ledger(coordinator=None).resolve(job_id="job-a", outcome="refund")
    assert done.state is EscrowState.REFUNDED
    assert _snapshot(world, "job-a") == (USER_FUNDS, 0, 0, 0)
    assert world.token_total("job-a") == USER_FUNDS
