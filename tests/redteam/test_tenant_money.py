"""Money that belongs to someone, attacked through the coordinator API (issue 16; SPEC C2, F1, F3).

A real coordinator (mTLS, TLS 1.3) with the production hooks and a key-less ledger view over an in-process
LiteSVM ledger. Two users (alice, bob) with their own wallets, two nodes with their own payout wallets.
Every attack sits beside its honest control and asserts the exact refusal and that nothing was created.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from solders.keypair import Keypair

from cyxwiz.ids import new_job_id
from cyxwiz.ledger import provision
from cyxwiz.ledger.client_funding import FundingTerms, sign_funding
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.view import LedgerView
from cyxwiz.storage.local import LocalObjectStore
from cyxwiz.storage.urlsign import UrlSigner
from tasks.hooks import PrefectHooks
from tests.coordinator.conftest import Env, auth, make_env
from tests.ledger.conftest import MINIMUM, NODE_PEER, USER_FUNDS, World

PAYMENT = 5 * MINIMUM


@dataclass
class Market:
    env: Env
    world: World
    ledger: EscrowLedger
    wallets: dict[str, Keypair]

    def token(self, user: str) -> str:
        return self.env.user_token(user)

    def terms(self, user: str) -> FundingTerms:
        with self.env.client() as c:
            r = c.get("/v1/wallet/terms", headers=auth(self.token(user)))
        assert r.status_code == 200, r.text
        return FundingTerms.from_dict(r.json())

    def funded_spec(self, user: str, *, wallet: str | None = None, amount: int = PAYMENT) -> dict[str, Any]:
        job_id = new_job_id()
        funding = sign_funding(
            self.terms(user), wallet=self.wallets[wallet or user], job_id=job_id, amount=amount, user=user
        )
        return {**_spec(), "funding": funding.to_dict()}

    def submit(self, user: str, spec: dict[str, Any]) -> Any:
        with self.env.client() as c:
            c.timeout = httpx.Timeout(120.0)  # the submission reads and checks the dataset (D3)
            return c.post("/v1/jobs", json={"spec": spec}, headers=auth(self.token(user)))

    def lock(self, user: str, job: dict[str, Any]) -> None:
        """What the lifecycle does next: send the signed bytes (the control plane holds no user key)."""
        from cyxwiz.ledger.client_funding import Funding, lock_signed

        lock_signed(self.ledger, Funding.from_dict(job["spec"]["funding"]), amount=PAYMENT, user=user)

    def wallet_view(self, user: str) -> dict[str, Any]:
        with self.env.client() as c:
            r = c.get("/v1/wallet", headers=auth(self.token(user)))
        assert r.status_code == 200, r.text
        return dict(r.json())


def _spec() -> dict[str, Any]:
    from infra.demo import REFERENCE_JOB

    spec = {k: v for k, v in REFERENCE_JOB.items() if k != "user"}
    return {**spec, "payment": PAYMENT}


@pytest.fixture
def market(money_world: World, tmp_path: Path) -> Iterator[Market]:
    world, chain = money_world, money_world.chain
    bob = Keypair()
    chain.airdrop(bob.pubkey(), 10**9)
    provision.fund_wallet(
        chain, payer=world.payer, mint=world.mint, wallet=bob.pubkey(), amount=USER_FUNDS,
        mint_authority=world.mint_authority,
    )  # fmt: skip
    ledger = world.ledger()
    view = LedgerView(
        chain=chain, store=ledger.store, mint=world.mint, decimals=6, multisig=world.multisig,
        payer=world.payer.pubkey(), minimum_payment=MINIMUM,
    )  # fmt: skip
    hooks = PrefectHooks(
        store=LocalObjectStore(root=tmp_path / "store", master_key=None),
        signer=UrlSigner(secret=b"s" * 32, base_url="https://127.0.0.1:1/objects"),
        start_flow_runs=False,
        ledger=view,
    )
    for env in make_env(tmp_path, hooks=hooks):
        yield Market(env=env, world=world, ledger=ledger, wallets={"alice": world.user, "bob": bob})


def _nothing_created(market: Market, user: str) -> None:
    assert market.env.coord.store.list_jobs(user_id=user) == []
    assert market.ledger.list_escrows() == []


def test_each_user_sees_only_their_own_escrows_and_balances(market: Market) -> None:
    """C2: alice's wallet view lists alice's escrow and wallet only; bob's lists bob's only."""
    locked: dict[str, str] = {}
    for user in ("alice", "bob"):
        r = market.submit(user, market.funded_spec(user))
        assert r.status_code == 201, r.text
        market.lock(user, r.json())
        locked[user] = r.json()["job_id"]
    for user, other in (("alice", "bob"), ("bob", "alice")):
        view = market.wallet_view(user)
        own = str(market.wallets[user].pubkey())
        assert view["user_id"] == user
        assert [e["job_id"] for e in view["escrows"]] == [locked[user]]
        assert view["wallets"] == {own: USER_FUNDS - PAYMENT}
        assert str(market.wallets[other].pubkey()) not in str(view)
        assert locked[other] not in str(view)
    # bob cannot read alice's job row either (C2, 403 and nothing about it leaks)
    with market.env.client() as c:
        r = c.get(f"/v1/jobs/{locked['alice']}", headers=auth(market.token("bob")))
    assert r.status_code == 403


def test_a_user_cannot_submit_another_users_signed_lock(market: Market) -> None:
    """C2/F1: bob replays alice's signed lock as his own submission: refused (422, F1), nothing created."""
    alices = market.funded_spec("alice")
    r = market.submit("bob", alices)
    assert r.status_code == 422, r.text
    assert r.json()["rule"] == "F1"
    _nothing_created(market, "bob")
    assert market.world.token(market.wallets["alice"]) == USER_FUNDS
    assert market.submit("alice", alices).status_code == 201  # positive control: alice's own submission


def test_a_user_cannot_fund_with_a_wallet_they_do_not_hold(market: Market) -> None:
    """bob names alice's wallet but signs with his own key: the signer is the only payer that counts."""
    spec = market.funded_spec("bob")
    spec["funding"]["wallet"] = str(market.wallets["alice"].pubkey())
    r = market.submit("bob", spec)
    assert r.status_code == 422 and r.json()["rule"] == "F1", r.text
    _nothing_created(market, "bob")


def test_underfunded_or_unfunded_submissions_are_refused_before_any_row(market: Market) -> None:
    """F1/F3: a lock of less than the payment, or none at all, is refused at POST /v1/jobs (422)."""
    short = market.funded_spec("alice", amount=MINIMUM)
    r = market.submit("alice", {**short, "payment": PAYMENT})
    assert r.status_code == 422 and r.json()["rule"] == "F1", r.text
    r = market.submit("alice", _spec())
    assert r.status_code == 422 and r.json()["field"] == "funding", r.text
    _nothing_created(market, "alice")


def test_a_taken_job_id_is_a_conflict_not_a_takeover(market: Market) -> None:
    first = market.submit("alice", market.funded_spec("alice"))
    assert first.status_code == 201
    job_id = first.json()["job_id"]
    # bob signs his own lock for alice's job id: the row is alice's, bob gets 409 and no row.
    funding = sign_funding(
        market.terms("bob"), wallet=market.wallets["bob"], job_id=job_id, amount=PAYMENT, user="bob"
    )
    r = market.submit("bob", {**_spec(), "funding": funding.to_dict()})
    assert r.status_code == 409, r.text
    assert market.env.coord.store.job(job_id).user_id == "alice"
    assert market.env.coord.store.list_jobs(user_id="bob") == []


def test_node_payout_wallet_is_bound_to_its_own_peer_id(market: Market) -> None:
    """F1/C2: node-b cannot register (or change) a wallet for node-a's PeerID; the admin list shows each
    node's own wallet."""
    env = market.env
    wallet_a, wallet_b = str(Keypair().pubkey()), str(Keypair().pubkey())

    def signed(node: str, wallet: str) -> dict[str, Any]:
        """The wallet statement the node's own certificate key signs (issue 17)."""
        from cyxwiz.ledger.payout import SignedWalletStatement
        from cyxwiz.pki.keys import load_private_key

        key = load_private_key(env.pki.node_key(node))
        return {
            "wallet": wallet,
            "wallet_statement": SignedWalletStatement.sign(key=key, wallet=wallet).to_dict(),
        }

    with env.client("node-a") as c:
        r = c.post("/v1/nodes/register", json={"hardware": {}, **signed("node-a", wallet_a)})
    assert r.status_code == 200, r.text
    peer_a = r.json()["peer_id"]
    with env.client("node-b") as c:
        r = c.post(
            "/v1/nodes/register", json={"hardware": {}, **signed("node-b", wallet_b), "peer_id": peer_a}
        )
    assert r.status_code == 403, r.text
    assert env.audit.of_action("impersonate")
    assert [n.peer_id for n in env.coord.store.list_nodes()] == [peer_a], "node-b got no row"
    assert env.coord.store.node_by_peer(peer_a).wallet == wallet_a  # type: ignore[union-attr]
    with env.client("node-b") as c:
        r = c.post("/v1/nodes/register", json={"hardware": {}, "wallet": "not-a-key"})
    assert r.status_code == 422
    with env.client("node-b") as c:  # positive control
        r = c.post("/v1/nodes/register", json={"hardware": {}, **signed("node-b", wallet_b)})
        assert r.status_code == 200, r.text
    admin = env.user_token("root", role="admin")
    with env.client() as c:
        listed = {n["wallet"] for n in c.get("/v1/admin/nodes", headers=auth(admin)).json()}
    assert listed == {wallet_a, wallet_b}


def test_release_pays_only_the_assigned_nodes_wallet(market: Market) -> None:
    """F1: with node-a assigned, a release to node-b's wallet is refused and moves nothing."""
    from cyxwiz.ledger.records import WrongRecipientError

    r = market.submit("alice", market.funded_spec("alice"))
    job_id = r.json()["job_id"]
    market.lock("alice", r.json())
    node_a, node_b = market.world.node, market.world.other_node
    market.ledger.assign(job_id=job_id, node_wallet=node_a.pubkey(), node_peer_id=NODE_PEER)
    report = market.world.attest(job_id)  # a passing verifier report for the assigned node
    with pytest.raises(WrongRecipientError):
        market.ledger.release(job_id=job_id, node_wallet=node_b.pubkey(), report=report)
    assert market.world.token(node_b) == 0
    market.ledger.release(job_id=job_id, node_wallet=node_a.pubkey(), report=report)
    assert market.world.token(node_a) == PAYMENT
    assert market.world.token(market.wallets["alice"]) == USER_FUNDS - PAYMENT


def test_a_redundant_jobs_second_lock_is_checked_at_the_door(market: Market) -> None:
    """F1/C2 (issue 20): a redundant job carries the user's second signed lock for the second node's share.
    Attacks: no second lock, a second lock for less, one reusing the first share's job id, bob's own lock
    (signed by bob for bob) replayed as alice's second share. Positive control: alice's two exact locks."""

    def redundant(user: str, *, wallet: str | None = None, amount: int = PAYMENT, same_id: bool = False):
        spec = market.funded_spec(user)
        replica = spec["funding"]["job_id"] if same_id else new_job_id()
        second = sign_funding(
            market.terms(user),
            wallet=market.wallets[wallet or user],
            job_id=replica,
            amount=amount,
            user=wallet or user,
        )
        return {**spec, "verification": {"mode": "redundant"}, "replica_funding": second.to_dict()}

    missing = {**market.funded_spec("alice"), "verification": {"mode": "redundant"}}
    for spec, field in (
        (missing, "replica_funding"),
        (redundant("alice", amount=PAYMENT - 1), "funding.message"),
        (redundant("alice", wallet="bob"), "funding.message"),
        (redundant("alice", same_id=True), "replica_funding.job_id"),
    ):
        r = market.submit("alice", spec)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field, r.json()
    _nothing_created(market, "alice")
    ok = market.submit("alice", redundant("alice"))
    assert ok.status_code == 201, ok.text
