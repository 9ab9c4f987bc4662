"""The stake belongs to the node, not to one of its keys (issues 17/18; F1, A7): a node staked under
PeerID P1 that renewed its certificate (new key, PeerID P2) is still dispatched to, and a fraud P2 signs
slashes P1's stake, through the coordinator's own links (a real CoordinatorStore, a real LiteSVM
ledger). A node with no stake under any of its PeerIDs is refused; another node's stake never counts,
and the verifier checks the stake it co-signs a slash of against the links itself."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import NotFoundError
from cyxwiz.ledger import provision
from cyxwiz.ledger.cosign import CosignRefusedError, KeyCosigner
from cyxwiz.ledger.stake import StakeLedger, StakeLockedError, StakePolicy, StakeTooLowError
from tasks.node_stake import node_peers, stake_ledger, staked_peer
from tests.ledger.conftest import NODE_PEER, USER_FUNDS, World

P1 = NODE_PEER  # the PeerID the node staked under (its first certificate)
P2 = "12D3KooWNodeOneRenewedPeerIdAfterRenewal"
OTHER = "12D3KooWAnotherNodeWithItsOwnStake"
OTHER_NEW = "12D3KooWAnotherNodeRenewedItsKey"
STAKE = 40_000
POLICY = StakePolicy(minimum=30_000, slash_bps=2500, cooldown=dt.timedelta(hours=1))


@pytest.fixture
def coordinator(tmp_path: Path) -> CoordinatorStore:
    store = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'coordinator.db'}")
    for peer, subject in ((P1, "node-one"), (OTHER, "node-two")):
        store.register_node(peer_id=peer, subject=subject, cert_serial=f"{subject}-1", hardware={})
    node = store.node_by_peer(P1)
    assert node is not None
    store.renew_node(node.node_id, peer_id=P2, cert_serial="node-one-2")  # A7: a new key, same node
    return store


def _stakes(w: World, store: CoordinatorStore, **overrides: object) -> StakeLedger:
    ledger = w.ledger(stake_policy=POLICY, **overrides)
    return stake_ledger(ledger=ledger, policy=POLICY, store=store)


def _fund_and_stake(w: World, stakes: StakeLedger, peer: str) -> None:
    provision.fund_wallet(
        w.chain, payer=w.payer, mint=w.mint, wallet=w.node.pubkey(), amount=STAKE,
        mint_authority=w.mint_authority,
    )  # fmt: skip
    stakes.stake(peer_id=peer, node=w.node, amount=STAKE)


def _fraud_by(w: World, stakes: StakeLedger, job_id: str, peer: str) -> str:
    stakes.ledger.create(job_id=job_id, user=w.user, amount=10_000)
    stakes.ledger.assign(job_id=job_id, node_wallet=w.node.pubkey(), node_peer_id=peer)
    stakes.ledger.refund(job_id=job_id, reason="verification proved fraud")
    return w.attest(job_id, verdict="fraud", node_peer_id=peer, report_sha256="fb" * 32)


def test_links_come_from_the_coordinator_only(
    coordinator: CoordinatorStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import services
    from tasks.coordinator_channel import SchedulerChannel

    channel = SchedulerChannel(store=coordinator, node_wallets={}, crl=tmp_path / "crl.pem")
    monkeypatch.setattr(services, "control_channel", lambda: channel)
    assert node_peers(P2) == {P1, P2} == node_peers(P1, coordinator)  # the plane's own coordinator
    assert node_peers(OTHER, coordinator) == {OTHER}
    assert node_peers("12D3KooWUnknown", coordinator) == {"12D3KooWUnknown"}


def test_renewed_node_is_dispatched_and_its_fraud_slashes_the_staked_peer(
    local_world: World, coordinator: CoordinatorStore
) -> None:
    w = local_world
    # The in-process verifier gets the same coordinator links the verifier service is given.
    ledger = w.ledger(stake_policy=POLICY, node_peers=lambda p: node_peers(p, coordinator))
    stakes = stake_ledger(ledger=ledger, policy=POLICY, store=coordinator)
    _fund_and_stake(w, stakes, P1)
    assert stakes.require(peer_id=P2).peer_id == P1  # positive control: dispatched under its new PeerID
    node = coordinator.node_by_peer(P2)
    assert node is not None and staked_peer(node.node_id, coordinator, stakes) == P1
    fraud = _fraud_by(w, stakes, "job-renewed", P2)
    record = stakes.slash(job_id="job-renewed", report=fraud)
    share = STAKE * 2500 // 10_000
    assert (record.peer_id, record.amount, record.slashed) == (P1, STAKE - share, share)
    assert w.token(w.user) == USER_FUNDS + share
    assert stakes.book.slashed_for("job-renewed")["peer_id"] == P1  # type: ignore[index]


def test_a_job_under_the_new_peer_locks_the_stake(local_world: World, coordinator: CoordinatorStore) -> None:
    w = local_world
    stakes = _stakes(w, coordinator)
    _fund_and_stake(w, stakes, P1)
    stakes.ledger.create(job_id="job-busy", user=w.user, amount=10_000)
    stakes.ledger.assign(job_id="job-busy", node_wallet=w.node.pubkey(), node_peer_id=P2)
    stakes.request_unstake(peer_id=P1)
    with pytest.raises(StakeLockedError, match="running or unsettled"):
        stakes.withdraw(
            peer_id=P1, withdrawal=w.withdrawal(w.node), now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        )
    assert stakes.status(peer_id=P1).amount == STAKE  # nothing moved


def test_no_stake_under_any_peer_is_refused(local_world: World, coordinator: CoordinatorStore) -> None:
    stakes = _stakes(local_world, coordinator)
    for peer in (P1, P2):
        with pytest.raises(StakeTooLowError, match="below the minimum"):
            stakes.require(peer_id=peer)


def test_another_nodes_stake_never_counts(local_world: World, coordinator: CoordinatorStore) -> None:
    w = local_world
    ledger = w.ledger(stake_policy=POLICY, node_peers=lambda p: node_peers(p, coordinator))
    stakes = stake_ledger(ledger=ledger, policy=POLICY, store=coordinator)
    _fund_and_stake(w, stakes, OTHER)  # node two's stake
    for peer in (P1, P2, OTHER_NEW):  # node one's PeerIDs, and a PeerID no coordinator record links
        with pytest.raises(StakeTooLowError):
            stakes.require(peer_id=peer)
    assert stakes.require(peer_id=OTHER).peer_id == OTHER  # positive control
    fraud = _fraud_by(w, stakes, "job-unstaked", P2)
    with pytest.raises(NotFoundError, match="no stake"):
        stakes.slash(job_id="job-unstaked", report=fraud)
    assert stakes.status(peer_id=OTHER).amount == STAKE and w.token(w.user) == USER_FUNDS


def test_the_verifier_checks_the_links_itself(local_world: World, coordinator: CoordinatorStore) -> None:
    """A coordinator whose links the verifier does not share cannot take a stake the proof's node lacks."""
    w = local_world
    ledger = w.ledger(stake_policy=POLICY)
    # The coordinator side claims P2 is OTHER's too; the verifier's own links (none here) disagree.
    stakes = StakeLedger(ledger=ledger, policy=POLICY, node_peers=lambda p: {p, OTHER})
    assert isinstance(ledger._cosigner(), KeyCosigner)
    _fund_and_stake(w, stakes, OTHER)
    fraud = _fraud_by(w, stakes, "job-forged", P2)
    with pytest.raises(CosignRefusedError, match="stake of the node the proof names"):
        stakes.slash(job_id="job-forged", report=fraud)
    assert stakes.status(peer_id=OTHER).amount == STAKE and w.token(w.user) == USER_FUNDS
    assert stakes.book.slashed_for("job-forged") is None


def test_the_sweep_slashes_a_renewed_nodes_owed_fraud_and_it_cannot_withdraw_first(
    local_world: World, coordinator: CoordinatorStore
) -> None:
    """The lifecycle refunds on a fraud report; the sweep takes the owed slash from the node's stake even
    though the escrow names its new PeerID, and until then the stake is locked (F1, F2, A7)."""
    w = local_world
    links = lambda p: node_peers(p, coordinator)  # noqa: E731
    ledger = w.ledger(stake_policy=POLICY, node_peers=links)
    stakes = stake_ledger(ledger=ledger, policy=POLICY, store=coordinator)
    _fund_and_stake(w, stakes, P1)
    ledger.create(job_id="job-owed", user=w.user, amount=10_000)
    ledger.assign(job_id="job-owed", node_wallet=w.node.pubkey(), node_peer_id=P2)
    fraud = w.attest("job-owed", verdict="fraud", node_peer_id=P2, report_sha256="fc" * 32)
    ledger.refund(job_id="job-owed", reason="verification proved fraud", report=fraud)
    stakes.request_unstake(peer_id=P1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    with pytest.raises(StakeLockedError, match="owes 1 slash"):
        stakes.withdraw(peer_id=P1, withdrawal=w.withdrawal(w.node), now=later)
    report = ledger.sweep(run_state=lambda _run: "gone", node_peers=links)
    assert report.slashed == ["job-owed"]
    share = STAKE * 2500 // 10_000
    assert stakes.status(peer_id=P1).amount == STAKE - share and w.token(w.user) == USER_FUNDS + share
    assert ledger.sweep(run_state=lambda _run: "gone", node_peers=links).slashed == []  # once (F2)
