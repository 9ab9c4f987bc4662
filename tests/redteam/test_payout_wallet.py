"""A node's pay goes only to the wallet its own certificate key signed (issue 17; SPEC F1, A5, threat I).

A real coordinator (mTLS, TLS 1.3, its SQLite store); nodes register through the agent's own client, which
signs the payout wallet statement with the node's certificate key; the control plane's verification hook
(``tasks.verifier_service.verify_hook``) reads the coordinator's database as the verifier service does; the
escrow is on an in-process LiteSVM ledger. The attacker holds the coordinator: it rewrites the node's
wallet row (alone, with an edited statement, or with another node's statement), or registers a statement
another key signed, or puts back the node's older statement. Beside each attack, the honest control.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agents.credentials import renew
from agents.node_client import read_session, register_node
from agents.settings import AgentSettings
from cyxwiz.coordinator.payout_rows import wallet_statements
from cyxwiz.coordinator.tables import nodes
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import ReportVerdictError, report_sha256
from cyxwiz.ledger.chain import LocalChain
from cyxwiz.ledger.payout import SignedWalletStatement
from cyxwiz.ledger.store import EscrowState
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from tasks import services
from tasks.config import ControlPlaneConfig
from tasks.coordinator_channel import SchedulerChannel
from tasks.payout_wallet import StatementMarks
from tasks.verifier_service import verify_hook
from tests.coordinator.conftest import Env, make_env
from tests.ledger.conftest import USER_FUNDS, World, build_world, make_pki

AMOUNT = 10_000


@dataclass
class Bench:
    env: Env
    world: World
    channel: SchedulerChannel
    peers: dict[str, str]
    node_ids: dict[str, str]
    tmp: Path

    @property
    def honest(self) -> str:
        return str(self.world.node.pubkey())

    @property
    def thief(self) -> str:
        return str(self.world.other_node.pubkey())

    def settings(self, node: str, wallet: str) -> AgentSettings:
        pki = self.env.pki
        return AgentSettings(
            node_name=node, cert=pki.node_cert(node), key=pki.node_key(node), ca_bundle=pki.bundle,
            coordinator_url=self.env.coord.url, work_root=self.tmp / f"agent-{node}", payout_wallet=wallet,
        )  # fmt: skip

    def register(self, node: str, body: dict[str, Any]) -> Any:
        with self.env.client(node) as c:
            return c.post("/v1/nodes/register", json={"hardware": {}, **body})

    def rewrite(self, node: str, **values: Any) -> None:
        """The attacker's write to the coordinator's database (no API: it owns the process)."""
        engine = self.env.coord.store.engine
        with engine.begin() as conn:
            if "wallet" in values:
                conn.execute(
                    nodes.update()
                    .where(nodes.c.node_id == self.node_ids[node])
                    .values(wallet=values["wallet"])
                )
            if "signed" in values:
                conn.execute(
                    wallet_statements.update()
                    .where(wallet_statements.c.node_id == self.node_ids[node])
                    .values(signed=values["signed"])
                )

    def settle(self, node: str, marks: StatementMarks | None = None) -> tuple[str, dict[str, Any], str, str]:
        """Dispatch a new job (the wallet the lifecycle reads from the row), lock its escrow to that wallet,
        run the verification hook; returns (job id, report, verdict, the dispatched wallet)."""
        job_id = self.channel.create_job(user="alice", spec={"job_type": "model"}, duration_s=60)
        dispatched = self.channel.assign(job_id, node=node)
        ledger = self.world.ledger()
        ledger.create(job_id=job_id, user=self.world.user, amount=AMOUNT)
        ledger.assign(job_id=job_id, node_wallet=dispatched["wallet"], node_peer_id=dispatched["peer_id"])
        request = {
            "job_id": job_id, "user": "alice", "payment": AMOUNT, "dataset": "sklearn:digits",
            "training_doc": {}, "memory_mb": 128, "wall_seconds": 5,
        }  # fmt: skip
        body = {
            "job_id": job_id, "node_peer_id": dispatched["peer_id"], "node_wallet": dispatched["wallet"],
            "escrow": self.escrow(job_id), "request": request, "dispatched": {"assignment": dispatched},
        }  # fmt: skip
        report, verdict = verify_hook(body, marks=marks)
        return job_id, report, verdict, dispatched["wallet"]

    def escrow(self, job_id: str) -> str:
        return str(txbuild.escrow_address(self.world.payer.pubkey(), job_id, self.world.user.pubkey()))


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    [check] = [c for c in report["checks"] if c["name"] == name]
    return dict(check)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    chain = LocalChain()
    world = build_world(
        chain, f"sqlite:///{tmp_path / 'escrow.db'}", fund=chain.airdrop, expire=chain.expire_blockhash,
        pki=make_pki(tmp_path / "ledger-pki"),
    )  # fmt: skip
    for env in make_env(tmp_path):
        config = ControlPlaneConfig(
            home=tmp_path, pki_root=env.pki.root, ledger_config=tmp_path / "ledger.json",
            store_root=tmp_path / "store", audit_dir=tmp_path / "audit",
            coordinator_db=str(env.coord.store.engine.url),
        )  # fmt: skip
        services.use(services.ControlPlane(config=config, environ={}))
        channel = SchedulerChannel(store=env.coord.store, node_wallets={}, crl=env.pki.crl)
        bench = Bench(env=env, world=world, channel=channel, peers={}, node_ids={}, tmp=tmp_path)
        for node, wallet in (("node-a", bench.honest), ("node-b", bench.thief)):
            done = register_node(bench.settings(node, wallet))  # the agent signs its statement
            bench.peers[node], bench.node_ids[node] = done["peer_id"], done["node_id"]
        try:
            yield bench
        finally:
            services.reset()
            for ledger in world.ledgers:
                ledger.store.dispose()


def _unpaid(bench: Bench, job_id: str) -> None:
    ledger = bench.world.ledger()
    assert ledger.status(job_id=job_id).state is EscrowState.LOCKED
    assert bench.world.token(bench.world.other_node) == 0  # the thief's wallet got nothing
    assert bench.world.token(bench.world.node) == 0
    assert ledger.onchain_amount(job_id=job_id) == AMOUNT


def _other_statement(bench: Bench) -> dict[str, Any]:
    stored = bench.env.coord.store.wallet_statement(bench.node_ids["node-b"])
    assert stored is not None
    return stored


def _edited_statement(bench: Bench) -> dict[str, Any]:
    stored = bench.env.coord.store.wallet_statement(bench.node_ids["node-a"])
    assert stored is not None
    return {**stored, "statement": {**stored["statement"], "wallet": bench.thief}}


def _signed_by_b_for_a(bench: Bench) -> dict[str, Any]:
    """node-a's PeerID and the thief's wallet, signed by node-b's certificate key."""
    signed = SignedWalletStatement.sign(
        key=load_private_key(bench.env.pki.node_key("node-b")), wallet=bench.thief
    )
    doc = signed.to_dict()
    doc["statement"]["peer_id"] = bench.peers["node-a"]
    return doc


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda b: None, id="wallet-row-only"),
        pytest.param(_edited_statement, id="statement-wallet-edited"),
        pytest.param(_other_statement, id="another-nodes-statement"),
        pytest.param(_signed_by_b_for_a, id="signed-by-another-nodes-key"),
    ],
)
def test_a_rewritten_wallet_row_gets_a_fail_and_moves_nothing(bench: Bench, forge: Any) -> None:
    """F1/threat I: the coordinator's database names the thief's wallet → verdict fail, the attestation
    of that verdict releases nothing; the honest node's own statement still counts (positive control)."""
    job, report, verdict, wallet = bench.settle("node-a")  # positive control: the node's own statement
    assert wallet == bench.honest
    honest = _check(report, "payout-wallet")
    assert honest["passed"] is True and f"signed by {bench.peers['node-a']}" in honest["reason"]

    signed = forge(bench)
    bench.rewrite("node-a", wallet=bench.thief, **({"signed": signed} if signed else {}))
    job, report, verdict, wallet = bench.settle("node-a")
    assert wallet == bench.thief  # the lifecycle was fooled: it dispatched with the row's wallet
    refused = _check(report, "payout-wallet")
    assert refused["passed"] is False and bench.thief in refused["reason"]
    assert (verdict, report["passed"]) == ("fail", False)
    # What the verifier service signs for that verdict cannot release (nothing moved, escrow locked).
    attestation = bench.world.attest(
        job, verdict=verdict, node_peer_id=bench.peers["node-a"], node_wallet=wallet,
        escrow=bench.escrow(job), report_sha256=report_sha256(report),
    )  # fmt: skip
    with pytest.raises(ReportVerdictError):
        bench.world.ledger().release(job_id=job, node_wallet=wallet, report=attestation)
    _unpaid(bench, job)
    assert bench.world.token(bench.world.user) == USER_FUNDS - 2 * AMOUNT  # both escrows still held


def test_an_operator_configured_wallet_is_the_other_source(bench: Bench) -> None:
    """F1: the operator's config file (never the coordinator's database) may name the node's wallet: with
    no valid statement the node is paid there (positive control) and the row's other wallet is refused."""
    config = dataclasses.replace(services.config(), node_wallets={bench.peers["node-a"]: bench.honest})
    services.use(services.ControlPlane(config=config, environ={}))
    bench.rewrite("node-a", wallet=bench.thief, signed={"statement": {}, "signature": ""})
    _job, report, verdict, _wallet = bench.settle("node-a")
    refused = _check(report, "payout-wallet")
    assert (refused["passed"], verdict) == (False, "fail") and "malformed" in refused["reason"]
    bench.rewrite("node-a", wallet=bench.honest)
    _job, report, _verdict, wallet = bench.settle("node-a")
    configured = _check(report, "payout-wallet")
    assert wallet == bench.honest and configured["passed"] is True
    assert configured["reason"].startswith("configured")


def _audited(bench: Bench, outcome: str) -> list[Any]:
    return [e for e in bench.env.audit.of_action("wallet.bind") if str(e.outcome.value) == outcome]


def test_a_statement_signed_by_another_nodes_key_is_refused_at_registration(bench: Bench) -> None:
    """F1/A5: node-a presents a statement node-b's key signed (for node-a's PeerID, or node-b's own):
    403 with the rule, an audited denial, and node-a's wallet and statement unchanged."""
    before = bench.env.coord.store.wallet_statement(bench.node_ids["node-a"])
    for forged in (_signed_by_b_for_a(bench), _other_statement(bench)):
        r = bench.register("node-a", {"wallet": forged["statement"]["wallet"], "wallet_statement": forged})
        assert r.status_code == 403, r.text
        assert r.json()["type"].endswith("wallet-statement-signature")
    assert len(_audited(bench, "denied")) == 2
    assert bench.env.coord.store.wallet_statement(bench.node_ids["node-a"]) == before
    assert bench.env.coord.store.node(bench.node_ids["node-a"]).wallet == bench.honest
    # A wallet with no statement at all is refused too (422): the coordinator vouches for nothing.
    r = bench.register("node-a", {"wallet": bench.thief})
    assert r.status_code == 422 and r.json()["field"] == "wallet_statement", r.text
    # Positive control: node-a's own key signs a new wallet; it is taken and audited.
    own = SignedWalletStatement.sign(
        key=load_private_key(bench.env.pki.node_key("node-a")), wallet=bench.thief
    )
    r = bench.register("node-a", {"wallet": bench.thief, "wallet_statement": own.to_dict()})
    assert r.status_code == 200, r.text
    assert bench.env.coord.store.node(bench.node_ids["node-a"]).wallet == bench.thief
    assert _audited(bench, "success")


def test_a_replayed_older_statement_is_refused_the_newest_wins(bench: Bench) -> None:
    """F1: the node moved from an old wallet (its key since leaked to the thief) to a new one. Its older
    statement, replayed, is refused 409 and audited at registration; put back into the database by the
    coordinator, the verifier service (which remembers the newest statement it accepted) fails it."""
    key = load_private_key(bench.env.pki.node_key("node-a"))
    now = time.time_ns() // 1_000_000
    old = SignedWalletStatement.sign(key=key, wallet=bench.thief, issued_at=now + 1000)
    new = SignedWalletStatement.sign(key=key, wallet=bench.honest, issued_at=now + 2000)
    for statement in (old, new, new):  # the same one twice: a retried registration is fine
        r = bench.register("node-a", {"wallet_statement": statement.to_dict()})
        assert r.status_code == 200, r.text
    same_time = SignedWalletStatement.sign(key=key, wallet=bench.thief, issued_at=now + 2000)
    for replay in (old, same_time):
        r = bench.register("node-a", {"wallet_statement": replay.to_dict()})
        assert r.status_code == 409, r.text
        assert r.json()["type"].endswith("wallet-statement-stale")
    assert len(_audited(bench, "denied")) == 2
    assert bench.env.coord.store.wallet_statement(bench.node_ids["node-a"]) == new.to_dict()
    assert bench.env.coord.store.node(bench.node_ids["node-a"]).wallet == bench.honest
    # Dated ahead of the coordinator's clock (it would outrank every later honest statement): 422.
    ahead = SignedWalletStatement.sign(key=key, wallet=bench.thief, issued_at=now + 3_600_000)
    assert bench.register("node-a", {"wallet_statement": ahead.to_dict()}).status_code == 422

    marks = StatementMarks.open(bench.tmp / "verifier" / "marks.db")
    _job, report, _verdict, wallet = bench.settle("node-a", marks)  # positive control: the newest
    assert wallet == bench.honest and _check(report, "payout-wallet")["passed"] is True
    bench.rewrite("node-a", wallet=bench.thief, signed=old.to_dict())
    job, report, verdict, wallet = bench.settle("node-a", marks)
    refused = _check(report, "payout-wallet")
    assert (wallet, refused["passed"], verdict) == (bench.thief, False, "fail")
    assert "replay" in refused["reason"]
    _unpaid(bench, job)


def test_a_dispute_resolved_for_the_node_pays_only_its_signed_wallet(bench: Bench) -> None:
    """F1: the arbiter resolves a disputed escrow "release"; the verifier co-signs it only to the wallet
    the node signed, not to the one a rewritten row put into the escrow record (positive control first)."""
    from cyxwiz.ledger.cosign import CosignRefusedError, KeyCosigner
    from tasks.payout_wallet import wallet_of_peer

    def arbitrated() -> Any:
        policy = dataclasses.replace(bench.world.ledger().verifier_policy(), payout_wallet=wallet_of_peer)
        return bench.world.ledger(verifier=KeyCosigner(bench.world.verifier, policy))

    job, _report, _verdict, wallet = bench.settle("node-a")
    assert wallet == bench.honest
    arbitrated().dispute(job_id=job, reason="the user disagrees")
    assert arbitrated().resolve(job_id=job, outcome="release").state is EscrowState.RELEASED
    assert bench.world.token(bench.world.node) == AMOUNT

    bench.rewrite("node-a", wallet=bench.thief)
    job, _report, _verdict, wallet = bench.settle("node-a")
    assert wallet == bench.thief  # the escrow record names the row's wallet
    arbitrated().dispute(job_id=job, reason="the user disagrees")
    with pytest.raises(CosignRefusedError):
        arbitrated().resolve(job_id=job, outcome="release")
    assert bench.world.ledger().status(job_id=job).state is EscrowState.DISPUTED
    assert bench.world.token(bench.world.other_node) == 0 and bench.world.token(bench.world.node) == AMOUNT
    assert arbitrated().resolve(job_id=job, outcome="refund").state is EscrowState.REFUNDED  # the way out


def test_a_renewal_carries_the_wallet_signed_by_the_new_key(bench: Bench) -> None:
    """F1/A7: the agent's renewal sends the wallet statement signed by its new key, so the wallet outlives
    the old certificate; one signed by the old key (not the certificate issued) refuses the renewal."""

    settings = bench.settings("node-a", bench.honest)
    session = read_session(settings)
    csr = create_csr(ed25519.Ed25519PrivateKey.generate(), common_name="node-a")
    old_key = SignedWalletStatement.sign(
        key=load_private_key(bench.env.pki.node_key("node-a")), wallet=bench.thief
    )
    with bench.env.client("node-a") as c:
        r = c.post(
            "/v1/nodes/renew",
            json={
                "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                "wallet_statement": old_key.to_dict(),
            },
            headers={"authorization": f"Bearer {session['session_token']}"},
        )
    assert r.status_code == 403 and r.json()["type"].endswith("wallet-statement-signature"), r.text
    assert bench.env.coord.store.peer_ids_of(bench.node_ids["node-a"]) == [
        bench.peers["node-a"]
    ]  # not renewed
    assert _audited(bench, "denied")

    renewed = renew(settings)  # positive control: the agent's own renewal
    assert renewed.cert is not None
    new_peer = peer_id(load_certificate(renewed.cert))
    stored = bench.env.coord.store.wallet_statement(bench.node_ids["node-a"])
    assert stored is not None and stored["statement"]["peer_id"] == new_peer != bench.peers["node-a"]
    _job, report, _verdict, wallet = bench.settle("node-a")
    paid = _check(report, "payout-wallet")
    assert wallet == bench.honest and paid["passed"] is True and new_peer in paid["reason"]
