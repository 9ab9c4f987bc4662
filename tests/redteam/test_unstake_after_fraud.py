"""A node the verifier proved a cheat does not take its stake back before the slash lands, whatever the
coordinator's database says; a revoked node key states no wallet (issue 17; SPEC F1, F2, A6, A7, threat I).

The attacker holds the coordinator: its escrow key, its database (the stake book, the escrow rows, the
slash claims) and the process that builds the withdrawal. It writes "slashed" beside a fraud the verifier
proved, "released" beside a job still holding its escrow, "cool-down long past", and cites a slash the
verifier co-signed but that never landed. The verifier service — its app called in this process, the
request crossing as JSON, its verdicts from its own ``/v1/verify`` — refuses each from its own book and
the chain, and the stake account stays untouched on the real ledger service (LiteSVM behind JSON-RPC).
Beside each attack, the honest withdrawal after the slash landed (or the job settled) pays the wallet the
node stated. A withdrawal signed by a revoked key (or with no certificate, another key's, or a verifier's)
is refused; the key the node renewed into, with a valid certificate, withdraws.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.ledger import provision, txbuild
from cyxwiz.ledger.payout import SignedRenewalLink, linked_keys
from cyxwiz.ledger.stake import StakeLedger, StakeLockedError, stake_address
from cyxwiz.ledger.stakebook import slashes
from cyxwiz.ledger.store import escrows
from cyxwiz.ledger.verifier_service import VerifierService
from cyxwiz.ledger.withdrawal import SignedStakeWithdrawal, StakeWithdrawalError
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from tests.ledger.conftest import NODE_KEY, NODE_PEER, USER_FUNDS, World, backdate_unstake
from tests.redteam._verifier import ServiceCosigner
from tests.redteam.test_stake_withdrawal import POLICY, STAKE

JOB_AMOUNT = 10_000
SHARE = STAKE * POLICY.slash_bps // 10_000


@dataclass
class Bench:
    w: World
    stakes: StakeLedger
    service: VerifierService
    links: list[dict[str, Any]]
    #: the verdict the verifier's verification reaches, per job
    verdicts: dict[str, str]

    @property
    def account(self) -> Any:
        return stake_address(self.w.payer.pubkey(), NODE_PEER)

    def held(self) -> int:
        return self.w.chain.token_amount(self.account) or 0

    def conserved(self, *jobs: str) -> None:
        """Every token is the user's, a node's, in an escrow or in the stake: nothing made or lost."""
        assert self.w.token_total(*jobs) + self.held() == USER_FUNDS + STAKE

    def job(self, job_id: str, verdict: str) -> str:
        """A job of the node, locked on chain, verified by the verifier service itself (its own book)."""
        led, w = self.stakes.ledger, self.w
        led.create(job_id=job_id, user=w.user, amount=JOB_AMOUNT)
        led.assign(job_id=job_id, node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
        self.verdicts[job_id] = verdict
        escrow = txbuild.escrow_address(w.payer.pubkey(), job_id, w.user.pubkey())
        bound = {"job_id": job_id, "node_peer_id": NODE_PEER, "node_wallet": str(w.node.pubkey()),
                 "escrow": str(escrow)}  # fmt: skip
        status, body = self.service.handle("POST", "/v1/verify", bound)
        assert status == 200, body
        return str(body["attestation"])

    def lie_cooled_down(self) -> None:
        """The database's cool-down, started long ago (the coordinator's word)."""
        self.stakes.request_unstake(peer_id=NODE_PEER)
        self.stakes.book.update(NODE_PEER, unstake_requested_at=dt.datetime.now(dt.UTC) - 2 * POLICY.cooldown)

    def time_passes(self) -> None:
        """The cool-down over on the verifier's clock too (its book shares this database here)."""
        backdate_unstake(self.stakes.book._engine, NODE_PEER, dt.datetime.now(dt.UTC) - 2 * POLICY.cooldown)


@pytest.fixture
def bench(money_world: World) -> Iterator[Bench]:
    w = money_world
    provision.fund_wallet(
        w.chain, payer=w.payer, mint=w.mint, wallet=w.node.pubkey(), amount=STAKE,
        mint_authority=w.mint_authority,
    )  # fmt: skip
    links: list[dict[str, Any]] = []
    verdicts: dict[str, str] = {}

    def later(peer: str) -> frozenset[str]:
        return linked_keys(peer, lambda olds: [x for x in links if x["link"]["old_peer_id"] in olds])

    def verify(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        verdict = verdicts[body["job_id"]]
        return {"job_id": body["job_id"], "passed": verdict == "pass", "checks": []}, verdict

    certs = w.pki.root / "certs"
    policy = dataclasses.replace(w.ledger(stake_policy=POLICY).verifier_policy(), later_peers=later)
    service = VerifierService(
        keypair=w.verifier, policy=policy, signing_key=load_private_key(certs / "verifier-key.pem"),
        certificate=load_certificate(certs / "verifier-cert.pem"), verify=verify,
    )  # fmt: skip
    stakes = StakeLedger(
        ledger=w.ledger(stake_policy=POLICY, verifier=ServiceCosigner(service)), policy=POLICY
    )
    stakes.stake(peer_id=NODE_PEER, node=w.node, amount=STAKE)
    yield Bench(w=w, stakes=stakes, service=service, links=links, verdicts=verdicts)


def _untouched(b: Bench, *jobs: str) -> None:
    assert b.held() == STAKE and b.w.token(b.w.node) == 0
    assert not b.stakes.status(peer_id=NODE_PEER).withdrawn
    b.conserved(*jobs)


def test_a_proven_fraud_keeps_the_stake_until_its_slash_lands_whatever_the_database_says(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, w = bench, bench.w
    led = b.stakes.ledger
    fraud = b.job("job-f", "fraud")
    led.refund(job_id="job-f", reason="verification proved fraud", report=fraud)
    # A slash the verifier co-signs but the coordinator never sends.
    instructions = _slash_instructions(b, "job-f", fraud)
    cosign = ("slash", "job-f", fraud, None)
    unsent, _ = b.stakes._build(instructions, led._keys("coordinator"), cosign=cosign)
    # The coordinator writes "slashed" (a claim with no transaction), "cool-down long past".
    with led.store._engine.begin() as conn:
        conn.execute(slashes.insert().values(
            job_id="job-f", peer_id=NODE_PEER, amount=SHARE, report_sha256="fa" * 32, signature="made-up",
        ))  # fmt: skip
    b.lie_cooled_down()
    with pytest.raises(StakeLockedError, match=r"proved fraud in job\(s\) job-f") as refused:
        b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert refused.value.rule == "F1" and refused.value.field == "peer_id"
    _untouched(b, "job-f")
    # It cites a slash the verifier co-signed but that was never sent, then a transaction that landed
    # but is no slash (the job's refund): neither is a slash that took anything.
    refund_tx = next(i.tx for i in led.store.intents("job-f") if i.kind == "refund")
    for cited in (bytes(unsent), refund_tx):
        evidence = json.dumps([base64.b64encode(cited).decode()])
        monkeypatch.setattr("cyxwiz.ledger.withdrawal.landed_slashes", lambda *_a, e=evidence: e)
        with pytest.raises(StakeLockedError, match="no slash of it that it co-signed has landed"):
            b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
        _untouched(b, "job-f")
    monkeypatch.undo()
    with led.store._engine.begin() as conn:  # the coordinator honest again: its claim goes
        conn.execute(slashes.delete())
    # Positive control: the slash lands (the sweep's path), then the honest withdrawal pays the rest.
    w.expire_blockhash()  # else the slash would be the unsent message's very bytes
    b.stakes.slash(job_id="job-f", report=fraud)
    b.time_passes()
    assert b.held() == STAKE - SHARE and w.token(w.user) == USER_FUNDS + SHARE
    record = b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert record.withdrawn and w.token(w.node) == STAKE - SHARE and b.held() == 0
    assert w.chain.get_account(b.account) is None
    b.conserved("job-f")


def test_a_dispute_the_arbiter_upheld_keeps_the_stake_until_its_slash_lands(bench: Bench) -> None:
    """The arbiter refunded the user from the dispute escrow (the verifier co-signed it): a fraud too. The
    coordinator writes "slashed" and "cool-down long past": the verifier still refuses (F1)."""
    b, w = bench, bench.w
    led = b.stakes.ledger
    led.create(job_id="job-d", user=w.user, amount=JOB_AMOUNT)
    led.assign(job_id="job-d", node_wallet=w.node.pubkey(), node_peer_id=NODE_PEER)
    led.dispute(job_id="job-d", reason="user: a segment does not reproduce")
    arbiter = w.ledger(coordinator=None, verifier=ServiceCosigner(b.service))
    arbiter.resolve(job_id="job-d", outcome="refund")  # segment 3 does not reproduce
    assert w.token(w.user) == USER_FUNDS
    with led.store._engine.begin() as conn:
        conn.execute(slashes.insert().values(
            job_id="job-d", peer_id=NODE_PEER, amount=SHARE, report_sha256="dispute-upheld",
            signature="made-up",
        ))  # fmt: skip
    b.lie_cooled_down()
    b.time_passes()
    with pytest.raises(StakeLockedError, match=r"proved fraud in job\(s\) job-d") as refused:
        b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert refused.value.rule == "F1"
    _untouched(b, "job-d")
    with led.store._engine.begin() as conn:  # positive control: the coordinator honest again
        conn.execute(slashes.delete())
    b.stakes.slash(job_id="job-d", reason="the arbiter upheld the dispute")
    assert w.token(w.user) == USER_FUNDS + SHARE
    record = b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert record.withdrawn and w.token(w.node) == STAKE - SHARE and b.held() == 0
    b.conserved("job-d")


def test_a_job_the_verifier_judged_keeps_the_stake_while_its_escrow_holds_funds(bench: Bench) -> None:
    """The coordinator marks a job released whose escrow still holds the user's funds on chain: the
    verifier judged that job for this node and sees the escrow not settled (F1, F2)."""
    b, w = bench, bench.w
    led = b.stakes.ledger
    passing = b.job("job-r", "pass")
    with led.store._engine.begin() as conn:
        conn.execute(escrows.update().where(escrows.c.job_id == "job-r").values(state="released"))
    b.lie_cooled_down()
    with pytest.raises(StakeLockedError, match=r"job\(s\) job-r of this node whose escrow still holds"):
        b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    _untouched(b, "job-r")
    with led.store._engine.begin() as conn:  # positive control: the job settles for real
        conn.execute(escrows.update().where(escrows.c.job_id == "job-r").values(state="locked"))
    led.release(job_id="job-r", node_wallet=w.node.pubkey(), report=passing)
    b.time_passes()
    record = b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert record.withdrawn and w.token(w.node) == STAKE + JOB_AMOUNT and b.held() == 0
    b.conserved("job-r")


def test_a_disputed_job_keeps_the_stake_while_its_dispute_escrow_holds_funds(bench: Bench) -> None:
    """The user disputed the job (its funds moved into the dispute escrow, the verifier co-signed it); the
    coordinator marks it released: the dispute escrow still holds the funds on chain, the verifier refuses
    until the arbiter settles it (F1, F2)."""
    b, w = bench, bench.w
    led = b.stakes.ledger
    b.job("job-x", "pass")
    led.dispute(job_id="job-x", reason="user: the metric looks made up")
    with led.store._engine.begin() as conn:
        conn.execute(escrows.update().where(escrows.c.job_id == "job-x").values(state="released"))
    b.lie_cooled_down()
    b.time_passes()
    with pytest.raises(StakeLockedError, match=r"job\(s\) job-x of this node whose escrow still holds"):
        b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    _untouched(b, "job-x")
    with led.store._engine.begin() as conn:  # positive control: the arbiter settles it for the node
        conn.execute(escrows.update().where(escrows.c.job_id == "job-x").values(state="disputed"))
    arbiter = w.ledger(coordinator=None, verifier=ServiceCosigner(b.service))
    arbiter.resolve(job_id="job-x", outcome="release", node_wallet=w.node.pubkey())
    record = b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert record.withdrawn and w.token(w.node) == STAKE + JOB_AMOUNT and b.held() == 0
    b.conserved("job-x")


def test_the_cool_down_runs_on_the_verifiers_clock_not_the_databases(bench: Bench) -> None:
    """The node asks to unstake with its signed request: the verifier records when (a notice it never
    co-signs). The coordinator backdates the book's cool-down: the verifier still counts from its own
    record (F1)."""
    b, w = bench, bench.w
    b.stakes.request_unstake(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    b.stakes.book.update(NODE_PEER, unstake_requested_at=dt.datetime.now(dt.UTC) - 2 * POLICY.cooldown)
    with pytest.raises(StakeLockedError, match=r"cool-down ends at .* on the verifier's clock") as refused:
        b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert refused.value.rule == "F1"
    _untouched(b)
    b.time_passes()  # positive control: the cool-down over on the verifier's clock
    record = b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=w.withdrawal(w.node))
    assert record.withdrawn and w.token(w.node) == STAKE and b.held() == 0


def test_a_revoked_key_states_no_wallet_the_key_it_renewed_into_does(bench: Bench) -> None:
    """The node's staking key was stolen and its certificate revoked (A6): the thief's withdrawal, signed
    with the genuine key, is refused by the verifier (as one with no certificate, another key's, or a
    certificate of another role), and so is one signed by the thief's own certified key through a link
    the stolen key signs (another node's name: the issuer renews under the same name only); the node's
    renewed key (linked by the old key before the theft, its certificate valid, beside the staking key's)
    withdraws to the wallet it states."""
    b, w = bench, bench.w
    b.lie_cooled_down()
    thief = w.other_node.pubkey()
    certs = w.pki.root / "certs"
    other = Ed25519PrivateKey.generate()
    cases = [
        (w.withdrawal(thief, cert=False), "must present its certificate"),
        (
            _with_cert(w.withdrawal(thief), w.node_certificate(other).read_text()),
            "not .*'s \\(another key\\)",
        ),
        (_with_cert(w.withdrawal(thief), (certs / "verifier-cert.pem").read_text()), "role is not 'worker'"),
    ]
    new_key = Ed25519PrivateKey.generate()  # the renewal: a new key, the link signed by the old one
    b.links.append(SignedRenewalLink.sign(old_key=NODE_KEY, new_peer_id=peer_id(new_key)).to_dict())
    renewed = w.withdrawal(w.node, key=new_key, stake_peer_id=NODE_PEER)
    # The thief, holding the stolen key, links it to its own certified key (another node's name).
    b.links.append(SignedRenewalLink.sign(old_key=NODE_KEY, new_peer_id=peer_id(other)).to_dict())
    by_thief = SignedStakeWithdrawal.sign(key=other, wallet=str(thief), stake_peer_id=NODE_PEER).to_json()
    staking_pem = w.node_certificate(NODE_KEY).read_text()
    cases += [
        (
            _with_cert(by_thief, w.node_certificate(other).read_text() + staking_pem),
            "a renewal keeps the name",
        ),
        (_with_cert(renewed, w.node_certificate(new_key).read_text()), "presents the staking key's certif"),
    ]
    w.pki.dev.revoke(w.node_certificate(NODE_KEY))  # published at once; the verifier re-reads the CRL
    cases.append((w.withdrawal(thief), "revoked"))
    for statement, why in cases:
        with pytest.raises(StakeWithdrawalError, match=why) as refused:
            b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=statement)
        assert refused.value.rule in ("A6", "A7", "A1") and refused.value.field == "withdrawal.certificate"
        _untouched(b)
    b.time_passes()
    record = b.stakes.withdraw(peer_id=NODE_PEER, withdrawal=renewed)  # positive control
    assert record.withdrawn and w.token(w.node) == STAKE and w.token(w.other_node) == 0 and b.held() == 0


def _with_cert(statement: str, pem: str) -> str:
    return dataclasses.replace(SignedStakeWithdrawal.parse(statement), certificate=pem).to_json()


def _slash_instructions(b: Bench, job_id: str, fraud: str) -> list[Any]:
    """The slash the ledger would send (the configured share to the job's user, the report in the memo)."""
    from spl.token import instructions as token_ix
    from spl.token.constants import TOKEN_PROGRAM_ID
    from spl.token.models import TransferCheckedParams

    from cyxwiz.ledger.attestation import ReportAttestation

    led, w = b.stakes.ledger, b.w
    digest = ReportAttestation.parse(fraud).report_sha256
    return [
        token_ix.transfer_checked(TransferCheckedParams(
            program_id=TOKEN_PROGRAM_ID, source=b.account, mint=w.mint,
            dest=txbuild.token_account_of(w.user.pubkey(), w.mint), owner=led.multisig, amount=SHARE,
            decimals=led.decimals, signers=[*(k.pubkey() for k in led._keys("coordinator")),
                                            led._cosigner().pubkey()],
        )),
        txbuild.memo(led.payer_key, f"cyxwiz:stake:slash:{job_id}:report={digest}"),
    ]  # fmt: skip
