"""A node's stake goes back only to a wallet the staking node's own key stated (issue 17; SPEC F1, F2, A7,
threat I "payment fraud").

The attacker holds the coordinator: its escrow key (one of the 2-of-3), its database (the stake book) and
the process that builds the withdrawal. It rewrites the book's ``node_wallet``, builds its own message
paying itself beside the node's genuine signed withdrawal, presents a withdrawal signed by another node's
key, one for another stake, a stale one, or one already used before a re-stake. The verifier's co-signing
policy — served by the verifier service's ASGI app, the request crossing as JSON — refuses each with its
precise error, and the stake account stays untouched on the real ledger service (LiteSVM behind JSON-RPC).
Beside each attack, the honest withdrawal after the cool-down lands in the wallet the node stated, also
one signed by the key the node renewed into.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from spl.token import instructions as token_ix
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.models import TransferCheckedParams

from cyxwiz.ledger import provision, txbuild
from cyxwiz.ledger.cosign import CosignRefusedError
from cyxwiz.ledger.payout import SignedRenewalLink, linked_keys
from cyxwiz.ledger.stake import StakeLedger, StakePolicy, stake_address, stakes
from cyxwiz.ledger.verifier_service import VerifierService
from cyxwiz.ledger.withdrawal import SignedStakeWithdrawal, StakeWithdrawalError, StaleWithdrawalError
from cyxwiz.pki.peerid import peer_id
from tests.ledger.conftest import NODE_KEY, NODE_PEER, USER_FUNDS, World, backdate_unstake
from tests.redteam._verifier import ServiceCosigner

STAKE = 40_000
POLICY = StakePolicy(minimum=30_000, slash_bps=2500, cooldown=dt.timedelta(hours=1))


@dataclass
class Bench:
    w: World
    stakes: StakeLedger
    #: the renewal links the coordinator stores (the verifier follows only the ones the old key signed)
    links: list[dict[str, Any]]

    @property
    def account(self) -> Pubkey:
        return stake_address(self.w.payer.pubkey(), NODE_PEER)

    def held(self) -> int:
        return self.w.chain.token_amount(self.account) or 0

    def conserved(self) -> None:
        assert self.w.token(self.w.node) + self.w.token(self.w.other_node) + self.held() == STAKE

    def cooled_down(self) -> None:
        self.stakes.request_unstake(peer_id=NODE_PEER)
        past = dt.datetime.now(dt.UTC) - 2 * POLICY.cooldown
        backdate_unstake(self.stakes.book._engine, NODE_PEER, past)  # on the verifier's clock too

    def crafted(self, dest: Pubkey, statement: str | None) -> str:
        """The compromised coordinator's own withdrawal message, paying ``dest``, sent with ``statement``."""
        led = self.stakes.ledger
        signers = led._keys("coordinator")
        instructions = [
            token_ix.create_idempotent_associated_token_account(led.payer_key, dest, led.mint),
            *txbuild._move_and_close(
                escrow=self.account, mint=led.mint, decimals=led.decimals, multisig=led.multisig,
                dest=txbuild.token_account_of(dest, led.mint), amount=self.held(),
                signers=[*(k.pubkey() for k in signers), led._cosigner().pubkey()], rent_owner=led.rent_owner,
            ),
            txbuild.memo(led.payer_key, f"cyxwiz:stake:withdraw:{NODE_PEER}"),
        ]  # fmt: skip
        return self.stakes._send(instructions, signers, cosign=("unstake", NODE_PEER, None, statement))


@pytest.fixture
def bench(money_world: World) -> Iterator[Bench]:
    w = money_world
    provision.fund_wallet(
        w.chain, payer=w.payer, mint=w.mint, wallet=w.node.pubkey(), amount=STAKE,
        mint_authority=w.mint_authority,
    )  # fmt: skip
    links: list[dict[str, Any]] = []
    ledger = w.ledger(stake_policy=POLICY)

    def later(peer: str) -> frozenset[str]:
        return linked_keys(peer, lambda olds: [x for x in links if x["link"]["old_peer_id"] in olds])

    policy = dataclasses.replace(ledger.verifier_policy(), later_peers=later)
    service = VerifierService(keypair=w.verifier, policy=policy, signing_key=None, certificate=None)
    stakes = StakeLedger(
        ledger=w.ledger(stake_policy=POLICY, verifier=ServiceCosigner(service)), policy=POLICY
    )
    stakes.stake(peer_id=NODE_PEER, node=w.node, amount=STAKE)
    yield Bench(w=w, stakes=stakes, links=links)


def _untouched(b: Bench) -> None:
    assert b.held() == STAKE and b.w.token(b.w.other_node) == 0
    assert not b.stakes.status(peer_id=NODE_PEER).withdrawn
    b.conserved()


def test_a_rewritten_stake_row_pays_nothing_the_node_stated_wallet_is_paid(bench: Bench) -> None:
    """The attacker rewrites the book's ``node_wallet``: the withdrawal pays the wallet of the node's
    signed statement; a message paying the row's wallet is refused by the verifier (F1, threat I)."""
    b, w = bench, bench.w
    b.cooled_down()
    thief = w.other_node.pubkey()
    b.stakes.book.update(NODE_PEER, node_wallet=str(thief))
    with pytest.raises(CosignRefusedError, match="only to the wallet the node's key stated") as refused:
        b.crafted(thief, w.withdrawal(w.node))  # the node's genuine statement, the row's destination
    assert refused.value.rule == "F1"
    _untouched(b)
    with pytest.raises(CosignRefusedError, match="signed withdrawal is missing"):
        b.crafted(thief, None)  # the old way: the book's word alone
    _untouched(b)
    record = b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))  # positive control
    assert record.withdrawn and w.token(w.node) == STAKE and w.token(w.other_node) == 0
    assert w.chain.get_account(b.account) is None  # emptied and closed
    b.conserved()


def test_a_withdrawal_signed_by_another_nodes_key_or_for_another_stake_is_refused(bench: Bench) -> None:
    b, w = bench, bench.w
    b.cooled_down()
    thief = w.other_node.pubkey()
    other = Ed25519PrivateKey.generate()
    forged = [
        # another node's own key, naming this node's stake and the thief's wallet
        (w.withdrawal(thief, key=other, stake_peer_id=NODE_PEER), "neither the staking key", "A7"),
        # this node's key, but for another stake (the other node's): not a statement about this one
        (w.withdrawal(thief, stake_peer_id=peer_id(other)), "for the stake of", "F1"),
    ]
    claimed = SignedStakeWithdrawal.sign(key=other, wallet=str(thief), stake_peer_id=NODE_PEER)
    body = dataclasses.replace(claimed.withdrawal, peer_id=NODE_PEER)  # claims the node's PeerID
    forged.append((dataclasses.replace(claimed, withdrawal=body).to_json(), "not signed by the key", "F1"))
    for statement, why, rule in forged:
        with pytest.raises(StakeWithdrawalError, match=why) as refused:
            b.crafted(thief, statement)  # the verifier's own refusal, rebuilt from the service's answer
        assert refused.value.rule == rule
        with pytest.raises(StakeWithdrawalError, match=why):
            b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=statement)  # the ledger refuses it too
        _untouched(b)
    assert b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node)).withdrawn  # positive control
    assert w.token(w.node) == STAKE


def test_a_stale_or_used_withdrawal_is_refused(bench: Bench) -> None:
    """Signed long ago, dated ahead, or already co-signed once before the node re-staked (F1, F2)."""
    b, w = bench, bench.w
    b.cooled_down()
    now_ms = int(time.time() * 1000)
    old = w.withdrawal(w.node, issued_at=now_ms - 2 * 3600 * 1000)
    with pytest.raises(StaleWithdrawalError, match="more than 3600 s ago"):
        b.crafted(w.node.pubkey(), old)
    with pytest.raises(StaleWithdrawalError, match="in the future"):
        b.crafted(w.node.pubkey(), w.withdrawal(w.node, issued_at=now_ms + 3600 * 1000))
    _untouched(b)
    used = w.withdrawal(w.node)
    assert b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=used).withdrawn  # positive control
    assert w.token(w.node) == STAKE
    w.expire_blockhash()  # else the re-stake would be the first deposit's very bytes
    b.stakes.stake(peer_id=NODE_PEER, node=w.node, amount=STAKE)  # the node stakes again
    b.cooled_down()
    with pytest.raises(StaleWithdrawalError, match="already co-signed") as refused:
        b.crafted(w.node.pubkey(), used)
    assert refused.value.rule == "F2"
    _untouched(b)
    assert b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node)).withdrawn
    assert w.token(w.node) == STAKE


def test_the_key_the_node_renewed_into_states_the_wallet_a_forged_link_does_not(bench: Bench) -> None:
    """After a renewal the node's new key signs the withdrawal: it counts through the link the old key
    signed (A7); a link the coordinator forges (signed by the new key itself) makes it count for nothing."""
    b, w = bench, bench.w
    b.cooled_down()
    new_key = Ed25519PrivateKey.generate()
    statement = w.withdrawal(w.node, key=new_key, stake_peer_id=NODE_PEER)
    forged = SignedRenewalLink.sign(old_key=new_key, new_peer_id=peer_id(new_key)).to_dict()
    forged["link"]["old_peer_id"] = NODE_PEER
    b.links.append(forged)
    with pytest.raises(StakeWithdrawalError, match="neither the staking key"):
        b.crafted(w.node.pubkey(), statement)
    _untouched(b)
    b.links.append(SignedRenewalLink.sign(old_key=NODE_KEY, new_peer_id=peer_id(new_key)).to_dict())
    assert b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=statement).withdrawn  # positive control
    assert w.token(w.node) == STAKE and b.held() == 0


def test_the_row_keyed_to_another_account_still_empties_only_the_peers_own(bench: Bench) -> None:
    """The book's ``stake_account`` is the coordinator's word too: the verifier derives the account from
    the staking PeerID, so a message emptying any other account under this node's name is refused."""
    b, w = bench, bench.w
    b.cooled_down()
    with b.stakes.book._engine.begin() as conn:
        conn.execute(stakes.update().values(stake_account=str(Keypair().pubkey())))
    assert b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node)).withdrawn
    assert w.token(w.node) == STAKE and b.held() == 0


def test_a_slash_takes_only_the_proven_nodes_own_account_and_only_its_share(money_world: World) -> None:
    """The attacker rewrites the fraudster's stake row: its ``stake_account`` to an honest node's, its
    ``amount`` to four times what it holds. The slash still takes the configured share of what the
    fraudster's own account (derived from its PeerID) holds on chain; a message taking the honest node's
    stake, or more than the share, is refused by the verifier (F1, threat I)."""
    from cyxwiz.ledger.cosign import CosignRefusedError as Refused

    w = money_world
    honest_key = Ed25519PrivateKey.generate()
    honest_peer = peer_id(honest_key)
    for wallet in (w.node, w.other_node):
        provision.fund_wallet(
            w.chain, payer=w.payer, mint=w.mint, wallet=wallet.pubkey(), amount=STAKE,
            mint_authority=w.mint_authority,
        )  # fmt: skip
    stakes = StakeLedger(ledger=w.ledger(stake_policy=POLICY), policy=POLICY)
    stakes.stake(peer_id=NODE_PEER, node=w.node, amount=STAKE)
    stakes.stake(peer_id=honest_peer, node=w.other_node, amount=STAKE)
    led = stakes.ledger
    led.create(job_id="job-f", user=w.user, amount=10_000)
    led.assign(job_id="job-f", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    fraud = w.attest("job-f", verdict="fraud", report_sha256="fa" * 32)
    led.refund(job_id="job-f", reason="verification proved fraud", report=fraud)
    honest_account = stake_address(w.payer.pubkey(), honest_peer)
    stakes.book.update(honest_peer, stake_account=str(Keypair().pubkey()))  # (the column is unique)
    stakes.book.update(NODE_PEER, stake_account=str(honest_account), amount=4 * STAKE)
    share = STAKE * POLICY.slash_bps // 10_000
    user = txbuild.token_account_of(w.user.pubkey(), w.mint)
    signers = led._keys("coordinator")
    for source, amount, why in (
        (honest_account, share, "the stake of the node the proof names"),
        (stake_address(w.payer.pubkey(), NODE_PEER), STAKE, "configured share"),
    ):
        instructions = [
            token_ix.transfer_checked(TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID, source=source, mint=w.mint, dest=user,
                owner=led.multisig, amount=amount, decimals=led.decimals,
                signers=[*(k.pubkey() for k in signers), led._cosigner().pubkey()],
            )),
            txbuild.memo(led.payer_key, "cyxwiz:stake:slash:job-f:report=" + "fa" * 32),
        ]  # fmt: skip
        with pytest.raises(Refused, match=why):
            stakes._build(instructions, signers, cosign=("slash", "job-f", fraud, None))
    assert w.chain.token_amount(honest_account) == STAKE
    record = stakes.slash(job_id="job-f", report=fraud)  # positive control: the share of what it holds
    assert record.peer_id == NODE_PEER and w.token(w.user) == USER_FUNDS + share
    assert w.chain.token_amount(stake_address(w.payer.pubkey(), NODE_PEER)) == STAKE - share
    assert w.chain.token_amount(honest_account) == STAKE


def test_a_withdrawal_without_the_nodes_signed_request_moves_nothing(bench: Bench) -> None:
    """The old call (the book's wallet): refused before anything is built, nothing moved (F1)."""
    b, w = bench, bench.w
    b.cooled_down()
    b.stakes.book.update(NODE_PEER, node_wallet=str(w.other_node.pubkey()))
    with pytest.raises(StakeWithdrawalError, match="no signed withdrawal") as refused:
        b.stakes.withdraw(peer_id=NODE_PEER)
    assert refused.value.rule == "F1"
    _untouched(b)
