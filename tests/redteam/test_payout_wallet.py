"""A node's pay goes only to the wallet the key that did the work signed (issue 17; SPEC F1, A5, A7, I).

A real coordinator (mTLS, TLS 1.3, its SQLite store); nodes register and renew through the agent's own
client, which signs the payout wallet statement with the node's certificate key and, at renewal, the link
from its old key to the new one; the control plane's verifier service (its ASGI app in this process, with
the real verification hook ``tasks.verifier_service.verify_hook`` reading the coordinator's database);
escrows on the local ledger service (LiteSVM behind JSON-RPC). Each job is a script job whose signed
completion proof and output are real, so an honest one passes verification and is paid.

The attacker holds the coordinator: it rewrites the node's wallet row (alone, with an edited statement,
with another node's statement), lists another genuine certificate under the honest node together with that
key's own statement, forges a renewal link, puts back an older statement. Beside each attack, the honest
control: the node is paid, also after a renewal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from solders.message import Message

from agents.credentials import renew
from agents.node_client import read_session, register_node
from agents.settings import AgentSettings
from cyxwiz.audit import MemorySink
from cyxwiz.coordinator.payout_rows import renewal_links, wallet_statements
from cyxwiz.coordinator.tables import node_certs, nodes
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import ReportAttestation, ReportVerdictError
from cyxwiz.ledger.cosign import CosignRequest
from cyxwiz.ledger.payout import SignedRenewalLink, SignedWalletStatement
from cyxwiz.ledger.store import EscrowState
from cyxwiz.ledger.verifier_service import VerifierService
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import fingerprint_sha256, load_certificate
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from cyxwiz.storage import layout
from cyxwiz.training.spec import parse_training_job
from cyxwiz.verification.proof import CheckpointSummary, CompletionProof, sign_proof
from tasks import services
from tasks.config import ControlPlaneConfig
from tasks.coordinator_channel import SchedulerChannel
from tasks.payout_wallet import StatementMarks
from tasks.verifier_service import money_rules, verify_hook
from tests.coordinator.conftest import Env, make_env
from tests.ledger.conftest import USER_FUNDS, World
from tests.redteam._verifier import ServiceCosigner

AMOUNT = 10_000
OUTPUT = b"the node's trained weights" * 40
DATA = {"train": "datasets/train.bin", "holdout": "datasets/holdout.bin"}


@dataclass(frozen=True)
class Settled:
    job_id: str
    report: dict[str, Any]
    attestation: str
    verdict: str
    wallet: str  # the wallet dispatch put into the escrow


@dataclass
class Bench:
    env: Env
    world: World
    channel: SchedulerChannel
    service: VerifierService
    marks: StatementMarks
    peers: dict[str, str]
    node_ids: dict[str, str]
    tmp: Path
    #: node -> (certificate path, key path) the node signs with now (a renewal changes them)
    identity: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    ledger_audit: MemorySink = field(default_factory=MemorySink)

    @property
    def honest(self) -> str:
        return str(self.world.node.pubkey())

    @property
    def thief(self) -> str:
        return str(self.world.other_node.pubkey())

    @property
    def audit(self) -> MemorySink:
        audit: MemorySink = self.service.audit
        return audit

    def settings(self, node: str, wallet: str) -> AgentSettings:
        pki = self.env.pki
        return AgentSettings(
            node_name=node, cert=pki.node_cert(node), key=pki.node_key(node), ca_bundle=pki.bundle,
            coordinator_url=self.env.coord.url, work_root=self.tmp / f"agent-{node}", payout_wallet=wallet,
        )  # fmt: skip

    def register(self, node: str, body: dict[str, Any]) -> Any:
        with self.env.client(node) as c:
            return c.post("/v1/nodes/register", json={"hardware": {}, **body})

    def sql(self, statement: Any) -> None:
        """The attacker's write to the coordinator's database (no API: it owns the process)."""
        with self.env.coord.store.engine.begin() as conn:
            conn.execute(statement)

    def rewrite(self, node: str, **values: Any) -> None:
        if "wallet" in values:
            self.sql(
                nodes.update().where(nodes.c.node_id == self.node_ids[node]).values(wallet=values["wallet"])
            )
        if "signed" in values:
            self.sql(
                wallet_statements.update()
                .where(wallet_statements.c.node_id == self.node_ids[node])
                .values(signed=values["signed"])
            )

    def ledger(self) -> Any:
        return self.world.ledger(verifier=ServiceCosigner(self.service), audit=self.ledger_audit)

    def settle(self, node: str, *, signed_by: str | None = None) -> Settled:
        """Dispatch a job and let the node (its key now, or ``signed_by``'s identity) deliver it."""
        return self.verify(self.dispatch(node), signed_by=signed_by or node)

    def dispatch(self, node: str) -> dict[str, Any]:
        """Dispatch a job (the wallet the lifecycle reads) and lock its escrow to that wallet."""
        job_id = self.channel.create_job(user="alice", spec={"job_type": "script"}, duration_s=60)
        dispatched = self.channel.assign(job_id, node=node)
        ledger = self.ledger()
        ledger.create(job_id=job_id, user=self.world.user, amount=AMOUNT)
        ledger.assign(job_id=job_id, node_wallet=dispatched["wallet"], node_peer_id=dispatched["peer_id"])
        return {"job_id": job_id, **dispatched}

    def verify(self, dispatched: dict[str, Any], *, signed_by: str) -> Settled:
        """The node delivers a signed proof and its output; the verifier service gives its verdict."""
        job_id = dispatched.pop("job_id")
        doc = _script_job(job_id)
        self._deliver(job_id, doc, *self.identity[signed_by])
        request = {
            "job_id": job_id, "user": "alice", "payment": AMOUNT, "dataset": "sklearn:digits",
            "training_doc": doc, "memory_mb": 128, "wall_seconds": 5,
        }  # fmt: skip
        body = {
            "job_id": job_id, "node_peer_id": dispatched["peer_id"], "node_wallet": dispatched["wallet"],
            "escrow": self.escrow(job_id), "request": request,
            "dispatched": {
                "assignment": dispatched, "training_doc": doc, "dataset_key": DATA["train"],
                "holdout_key": DATA["holdout"], "holdout_sha256": hashlib.sha256(b"holdout").hexdigest(),
            },
        }  # fmt: skip
        status, answer = self.service.handle("POST", "/v1/verify", body)
        assert status == 200, answer
        attestation = str(answer["attestation"])
        verdict = ReportAttestation.parse(attestation).verdict
        return Settled(job_id, answer["report"], attestation, verdict, dispatched["wallet"])

    def _deliver(self, job_id: str, doc: dict[str, Any], cert_path: Path, key_path: Path) -> None:
        """What the agent does at the end of a job: upload the output, sign the proof, report it."""
        services.store().put_bytes(layout.job_output(job_id, "model.bin"), OUTPUT)
        cert = load_certificate(cert_path)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        proof = CompletionProof(
            job_id=job_id, job_spec_sha256=parse_training_job(doc).sha256(), node_peer_id=peer_id(cert),
            cert_fingerprint_sha256=fingerprint_sha256(cert).hex(), token_jti="jti-1",
            artifacts={"model.bin": hashlib.sha256(OUTPUT).hexdigest()}, metrics={},
            checkpoints=CheckpointSummary(merkle_root="0" * 64, count=0),
            started_at=_z(now - dt.timedelta(seconds=30)), finished_at=_z(now - dt.timedelta(seconds=1)),
        )  # fmt: skip
        signed = sign_proof(proof, load_private_key(key_path))
        self.env.coord.store.update_job(job_id, proof=json.loads(signed.to_json()), status="completed")

    def pay(self, settled: Settled) -> Any:
        return self.ledger().release(
            job_id=settled.job_id, node_wallet=settled.wallet, report=settled.attestation
        )

    def escrow(self, job_id: str) -> str:
        return str(txbuild.escrow_address(self.world.payer.pubkey(), job_id, self.world.user.pubkey()))

    def release_message(self, job_id: str, wallet: str) -> bytes:
        """The release a compromised coordinator hands the verifier directly (its own checks skipped)."""
        from solders.pubkey import Pubkey

        instructions = txbuild.settle_escrow(
            payer=self.world.payer.pubkey(), escrow=Pubkey.from_string(self.escrow(job_id)),
            mint=self.world.mint, decimals=6, multisig=self.world.multisig,
            recipient_wallet=Pubkey.from_string(wallet), amount=AMOUNT,
            authority_signers=[self.world.coordinator.pubkey(), self.world.verifier.pubkey()],
            memo_text=f"cyxwiz:escrow:release:{job_id}",
        )  # fmt: skip
        blockhash, _ = self.world.chain.latest_blockhash()
        return bytes(Message.new_with_blockhash(instructions, self.world.payer.pubkey(), blockhash))


def _z(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _script_job(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id, "job_type": "script", "script": {"entry": "train.py", "sha256": "cd" * 32},
        "dataset": {"uri": "s3://cyxwiz-data/digits/train.npz", "sha256": "ab" * 32},
        "training": {"seed": 7, "checkpoint_every": 5, "hyperparameters": {"batch_size": 32}},
        "task": {"num_classes": 10, "threshold": 0.9},
    }  # fmt: skip


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    [check] = [c for c in report["checks"] if c["name"] == name]
    return dict(check)


@pytest.fixture
def bench(money_world: World, tmp_path: Path) -> Iterator[Bench]:
    world = money_world
    for env in make_env(tmp_path):
        config = ControlPlaneConfig(
            home=tmp_path, pki_root=env.pki.root, ledger_config=tmp_path / "ledger.json",
            store_root=tmp_path / "store", audit_dir=tmp_path / "audit",
            coordinator_db=str(env.coord.store.engine.url),
        )  # fmt: skip
        services.use(services.ControlPlane(config=config, environ={}))
        for name, key in DATA.items():
            services.store().put_bytes(key, name.encode())
        channel = SchedulerChannel(store=env.coord.store, node_wallets={}, crl=env.pki.crl)
        marks = StatementMarks.open(tmp_path / "verifier" / "marks.db")
        policy = dataclasses.replace(world.ledger().verifier_policy(), **money_rules(marks))
        verifier_pki = world.pki.root / "certs"
        service = VerifierService(
            keypair=world.verifier, policy=policy,
            signing_key=load_private_key(verifier_pki / "verifier-key.pem"),
            certificate=load_certificate(verifier_pki / "verifier-cert.pem"),
            verify=functools.partial(verify_hook, marks=marks), audit=MemorySink(),
        )  # fmt: skip
        bench = Bench(
            env=env, world=world, channel=channel, service=service, marks=marks, peers={}, node_ids={},
            tmp=tmp_path,
        )  # fmt: skip
        for node, wallet in (("node-a", bench.honest), ("node-b", bench.thief)):
            done = register_node(bench.settings(node, wallet))  # the agent signs its statement
            bench.peers[node], bench.node_ids[node] = done["peer_id"], done["node_id"]
            bench.identity[node] = (env.pki.node_cert(node), env.pki.node_key(node))
        try:
            yield bench
        finally:
            services.reset()


def _paid(bench: Bench, settled: Settled, *, total: int) -> None:
    """Positive control: the verdict passed and the release paid the node's own wallet."""
    assert (settled.verdict, settled.wallet) == ("pass", bench.honest), settled.report
    assert bench.pay(settled).state is EscrowState.RELEASED
    assert bench.world.token(bench.world.node) == total


def _refused(bench: Bench, settled: Settled, *, paid_before: int, check: str = "payout-wallet") -> None:
    """The verdict failed on ``check``; neither the ledger nor the verifier service itself (asked
    directly, as the compromised coordinator would) moves the escrow; the refusal is audited."""
    assert (settled.verdict, settled.report["passed"]) == ("fail", False)
    assert _check(settled.report, check)["passed"] is False
    [verdict] = [
        e for e in bench.audit.of_action("verification.verdict") if e.resource.endswith(settled.job_id)
    ]
    assert verdict.outcome.value == "failure" and verdict.details["reason"].startswith("fail")
    with pytest.raises(ReportVerdictError):
        bench.pay(settled)
    message = bench.release_message(settled.job_id, settled.wallet)
    request = CosignRequest(
        kind="release", job_id=settled.job_id, message=message, report=settled.attestation
    )
    with pytest.raises(ReportVerdictError):
        ServiceCosigner(bench.service).cosign(request)
    [cosign] = bench.audit.of_action("escrow.cosign.release")[-1:]
    assert cosign.outcome.value == "failure" and "escrow-report-verdict" in cosign.details["reason"]
    ledger = bench.world.ledger()
    assert ledger.status(job_id=settled.job_id).state is EscrowState.LOCKED
    assert ledger.onchain_amount(job_id=settled.job_id) == AMOUNT
    assert bench.world.token(bench.world.other_node) == 0  # the thief's wallet got nothing
    assert bench.world.token(bench.world.node) == paid_before


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
        pytest.param(_edited_statement, id="statement-wallet-edited"),
        pytest.param(_other_statement, id="another-nodes-statement"),
        pytest.param(_signed_by_b_for_a, id="signed-by-another-nodes-key"),
    ],
)
def test_a_rewritten_wallet_row_gets_a_fail_and_moves_nothing(bench: Bench, forge: Any) -> None:
    """F1/threat I: the coordinator's database names the thief's wallet → verdict fail, the attestation
    of that verdict releases nothing; the honest node's own statement still counts (positive control)."""
    _paid(bench, bench.settle("node-a"), total=AMOUNT)
    bench.rewrite("node-a", wallet=bench.thief, signed=forge(bench))
    settled = bench.settle("node-a")
    assert settled.wallet == bench.thief  # the lifecycle was fooled: no statement it can check names one
    assert bench.thief in _check(settled.report, "payout-wallet")["reason"]
    _refused(bench, settled, paid_before=AMOUNT)
    assert bench.world.token(bench.world.user) == USER_FUNDS - 2 * AMOUNT


def test_a_rewritten_wallet_column_alone_no_longer_misdirects_dispatch(bench: Bench) -> None:
    """F1: dispatch reads the wallet the node's key signed, not the column: a rewritten row alone used to
    send the node's jobs to a wallet the verifier refuses (the job refunded, the node unpaid)."""
    bench.rewrite("node-a", wallet=bench.thief)
    _paid(bench, bench.settle("node-a"), total=AMOUNT)


def _foreign_certificate(bench: Bench) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """A genuine certificate of the coordinator's own CA for a key the thief holds (another node's)."""
    issued = bench.env.pki.issuing_ca().issue(common_name="node-c", role="worker")
    assert issued.private_key is not None
    return issued.certificate, issued.private_key


def _list_under_node_a(bench: Bench, cert: x509.Certificate) -> None:
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    bench.sql(node_certs.delete().where(node_certs.c.peer_id == peer_id(cert)))
    bench.sql(
        node_certs.insert().values(
            peer_id=peer_id(cert), node_id=bench.node_ids["node-a"], serial=format(cert.serial_number, "x"),
            pem=pem, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            recorded_at=dt.datetime.now(dt.UTC),
        )
    )  # fmt: skip


@pytest.mark.parametrize("which", ["fresh-ca-certificate", "node-b-certificate", "with-forged-link"])
def test_another_genuine_certificate_listed_under_the_node_cannot_redirect_its_pay(
    bench: Bench, which: str
) -> None:
    """F1/A5/threat I (the hole the node → certificates mapping left): the coordinator lists a second,
    genuinely CA-issued certificate under the honest node's row (a fresh one for the thief's key, or
    node-b's own) with that key's own statement of the thief's wallet (and, in one variant, a "renewal
    link" from the honest key to it that the thief's key signed). The statement verifies against that
    certificate, but its key is not the one that signed the completion proof, nor one that key renewed
    into: verdict fail, nothing moves. Positive control first: the honest node is paid."""
    _paid(bench, bench.settle("node-a"), total=AMOUNT)
    if which == "node-b-certificate":
        cert, key = (
            load_certificate(bench.env.pki.node_cert("node-b")),
            load_private_key(bench.env.pki.node_key("node-b")),
        )
    else:
        cert, key = _foreign_certificate(bench)
    _list_under_node_a(bench, cert)
    forged = SignedWalletStatement.sign(key=key, wallet=bench.thief)
    bench.rewrite("node-a", wallet=bench.thief, signed=forged.to_dict())
    if which == "with-forged-link":
        link = SignedRenewalLink.sign(old_key=key, new_peer_id=peer_id(cert)).to_dict()
        link["link"]["old_peer_id"] = bench.peers["node-a"]  # "the honest key renewed into mine"
        bench.sql(
            renewal_links.insert().values(
                old_peer_id=bench.peers["node-a"], new_peer_id=peer_id(cert),
                node_id=bench.node_ids["node-a"], signed=link, recorded_at=dt.datetime.now(dt.UTC),
            )
        )  # fmt: skip
    settled = bench.settle("node-a")
    assert settled.wallet == bench.thief  # dispatch took the statement: a held certificate signed it
    reason = _check(settled.report, "payout-wallet")["reason"]
    assert f"signed by {peer_id(cert)}, not by the key that signed the completion proof" in reason
    _refused(bench, settled, paid_before=AMOUNT)


def test_a_proof_another_genuine_key_signed_for_the_nodes_job_is_not_the_nodes(bench: Bench) -> None:
    """F1/A5/threat I: the coordinator lists node-b's certificate under node-a, makes node-b's statement
    node-a's, and hands the verifier a proof node-b's key signed over node-a's job (its output is
    node-a's): the proof verifies against a certificate "of the node", but its key is not the one the job
    was assigned to nor one that key renewed into: verdict fail, nothing moves (positive control first)."""
    _paid(bench, bench.settle("node-a"), total=AMOUNT)
    _list_under_node_a(bench, load_certificate(bench.env.pki.node_cert("node-b")))
    bench.rewrite("node-a", wallet=bench.thief, signed=_other_statement(bench))
    settled = bench.settle("node-a", signed_by="node-b")
    assert settled.wallet == bench.thief
    reason = _check(settled.report, "proof-key")["reason"]
    assert f"signed by {bench.peers['node-b']}, not by the assigned key {bench.peers['node-a']}" in reason
    _refused(bench, settled, paid_before=AMOUNT, check="proof-key")


def test_a_slash_takes_only_the_stake_of_the_attested_key_or_one_that_renewed_into_it(bench: Bench) -> None:
    """F1/A7/threat I: the coordinator lists the honest node-a's certificate under node-b and has a fraud
    of node-b's key slashed: its own records "link" node-a's stake to node-b, but the verifier follows only
    renewal links the earlier key signed, and refuses to co-sign (nothing moves). Positive control: after
    node-a's own renewal, a fraud its new key signs slashes the stake staked under its old key."""
    from cyxwiz.ledger import provision
    from cyxwiz.ledger.cosign import CosignRefusedError
    from cyxwiz.ledger.stake import StakePolicy
    from tasks.node_stake import stake_ledger

    w, honest = bench.world, bench.peers["node-a"]
    stake = 40_000
    policy = StakePolicy()  # the verifier's own (the in-process policy's default): 25 % slashed
    ledger = w.ledger(stake_policy=policy, verifier=ServiceCosigner(bench.service), audit=bench.ledger_audit)
    stakes = stake_ledger(ledger=ledger, policy=policy, store=bench.env.coord.store)
    provision.fund_wallet(
        w.chain, payer=w.payer, mint=w.mint, wallet=w.node.pubkey(), amount=stake,
        mint_authority=w.mint_authority,
    )  # fmt: skip
    stakes.stake(peer_id=honest, node=w.node, amount=stake)

    def fraud_by(peer: str) -> str:
        job_id = bench.channel.create_job(user="alice", spec={"job_type": "script"}, duration_s=60)
        ledger.create(job_id=job_id, user=w.user, amount=AMOUNT)
        ledger.assign(job_id=job_id, node_wallet=w.node.pubkey(), node_peer_id=peer)
        report = w.attest(job_id, verdict="fraud", node_peer_id=peer, report_sha256="fb" * 32)
        ledger.refund(job_id=job_id, reason="verification proved fraud", report=report)
        return job_id

    cert_a = load_certificate(bench.env.pki.node_cert("node-a"))
    bench.sql(
        node_certs.update().where(node_certs.c.peer_id == honest).values(node_id=bench.node_ids["node-b"])
    )
    assert peer_id(cert_a) in {
        c.peer_id for c in bench.env.coord.store.node_certificates(bench.node_ids["node-b"])
    }
    job = fraud_by(bench.peers["node-b"])
    user_before = w.token(w.user)
    with pytest.raises(CosignRefusedError, match="the stake of the node the proof names"):
        stakes.slash(
            job_id=job,
            report=w.attest(
                job, verdict="fraud", node_peer_id=bench.peers["node-b"], report_sha256="fb" * 32
            ),
        )
    assert stakes.status(peer_id=honest).amount == stake and w.token(w.user) == user_before
    [refused] = bench.audit.of_action("escrow.cosign.slash")
    assert refused.outcome.value == "failure" and "escrow-cosign-refused" in refused.details["reason"]

    renewed = renew(bench.settings("node-a", bench.honest))  # the agent: the old key links the new one
    assert renewed.cert is not None
    new_peer = peer_id(load_certificate(renewed.cert))
    job = fraud_by(new_peer)
    report = w.attest(job, verdict="fraud", node_peer_id=new_peer, report_sha256="fb" * 32)
    assert stakes.slash(job_id=job, report=report).amount == stake - stake // 4
    assert w.token(w.user) == user_before + stake // 4


def test_an_operator_configured_wallet_is_the_other_source(bench: Bench) -> None:
    """F1: the operator's config file (never the coordinator's database) may name the node's wallet by the
    proof key's PeerID: with no valid statement the node is paid there (positive control); the row's other
    wallet is refused."""
    config = dataclasses.replace(services.config(), node_wallets={bench.peers["node-a"]: bench.honest})
    services.use(services.ControlPlane(config=config, environ={}))
    bench.rewrite("node-a", wallet=bench.thief, signed={"statement": {}, "signature": ""})
    settled = bench.settle("node-a")
    refused = _check(settled.report, "payout-wallet")
    assert (refused["passed"], settled.verdict) == (False, "fail") and "malformed" in refused["reason"]
    bench.rewrite("node-a", wallet=bench.honest)
    settled = bench.settle("node-a")
    assert _check(settled.report, "payout-wallet")["reason"].startswith("configured")
    _paid(bench, settled, total=AMOUNT)


def _audited(bench: Bench, outcome: str, action: str = "wallet.bind") -> list[Any]:
    return [e for e in bench.env.audit.of_action(action) if str(e.outcome.value) == outcome]


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

    _paid(bench, bench.settle("node-a"), total=AMOUNT)  # positive control: the newest
    bench.rewrite("node-a", wallet=bench.thief, signed=old.to_dict())
    settled = bench.settle("node-a")
    assert settled.wallet == bench.thief and "replay" in _check(settled.report, "payout-wallet")["reason"]
    _refused(bench, settled, paid_before=AMOUNT)


def test_a_dispute_resolved_for_the_node_pays_only_its_signed_wallet(bench: Bench) -> None:
    """F1: the arbiter resolves a disputed escrow "release"; the verifier co-signs it only to the wallet
    the key of the proof it judged stated, not to the one a rewritten row put into the escrow record, nor
    to a job whose proof it never judged (positive control first)."""
    from cyxwiz.ledger.cosign import CosignRefusedError

    settled = bench.settle("node-a")
    bench.ledger().dispute(job_id=settled.job_id, reason="the user disagrees")
    assert bench.ledger().resolve(job_id=settled.job_id, outcome="release").state is EscrowState.RELEASED
    assert bench.world.token(bench.world.node) == AMOUNT

    cert, key = _foreign_certificate(bench)
    _list_under_node_a(bench, cert)
    forged = SignedWalletStatement.sign(key=key, wallet=bench.thief)
    bench.rewrite("node-a", wallet=bench.thief, signed=forged.to_dict())
    for proved in (True, False):
        if proved:
            job_id = bench.settle("node-a").job_id
            assert bench.ledger().status(job_id=job_id).node_wallet == bench.thief
        else:  # never verified: the escrow names the thief, no proof judged here names any key
            job_id = bench.channel.create_job(user="alice", spec={"job_type": "script"}, duration_s=60)
            bench.ledger().create(job_id=job_id, user=bench.world.user, amount=AMOUNT)
            bench.ledger().assign(job_id=job_id, node_wallet=bench.thief, node_peer_id=peer_id(cert))
        bench.ledger().dispute(job_id=job_id, reason="the user disagrees")
        with pytest.raises(CosignRefusedError):
            bench.ledger().resolve(job_id=job_id, outcome="release")
        assert bench.world.ledger().status(job_id=job_id).state is EscrowState.DISPUTED
        assert (
            bench.world.token(bench.world.other_node) == 0 and bench.world.token(bench.world.node) == AMOUNT
        )
        assert bench.ledger().resolve(job_id=job_id, outcome="refund").state is EscrowState.REFUNDED


def _renew_request(bench: Bench, body: dict[str, Any]) -> Any:
    session = read_session(bench.settings("node-a", bench.honest))
    with bench.env.client("node-a") as c:
        return c.post(
            "/v1/nodes/renew", json=body, headers={"authorization": f"Bearer {session['session_token']}"}
        )


def test_a_renewal_needs_the_old_keys_link_and_the_new_keys_wallet(bench: Bench) -> None:
    """F1/A7: a renewal carries the wallet statement signed by the new key and the link the old key signed
    to the new key. A statement signed by the old key, no link, a link another key signed, or a link to
    another key each refuse the renewal (audited); nothing is renewed or linked."""
    old_key = load_private_key(bench.env.pki.node_key("node-a"))
    new_key = ed25519.Ed25519PrivateKey.generate()
    csr = create_csr(new_key, common_name="node-a").public_bytes(serialization.Encoding.PEM).decode()
    link = SignedRenewalLink.sign(old_key=old_key, new_peer_id=peer_id(new_key)).to_dict()
    statement = SignedWalletStatement.sign(key=new_key, wallet=bench.honest).to_dict()
    by_b = SignedRenewalLink.sign(
        old_key=load_private_key(bench.env.pki.node_key("node-b")), new_peer_id=peer_id(new_key)
    ).to_dict()
    by_b["link"]["old_peer_id"] = bench.peers["node-a"]
    elsewhere = SignedRenewalLink.sign(
        old_key=old_key, new_peer_id=peer_id(ed25519.Ed25519PrivateKey.generate())
    ).to_dict()
    old_statement = SignedWalletStatement.sign(key=old_key, wallet=bench.thief).to_dict()
    attempts = [
        (
            {"csr": csr, "renewal_link": link, "wallet_statement": old_statement},
            403,
            "wallet-statement-signature",
        ),
        ({"csr": csr, "wallet_statement": statement}, 422, "validation"),
        ({"csr": csr, "renewal_link": by_b, "wallet_statement": statement}, 403, "renewal-link-signature"),
        (
            {"csr": csr, "renewal_link": elsewhere, "wallet_statement": statement},
            403,
            "renewal-link-signature",
        ),
    ]
    for body, status, kind in attempts:
        r = _renew_request(bench, body)
        assert r.status_code == status and r.json()["type"].endswith(kind), r.text
    assert len(_audited(bench, "denied", "certificate.renew")) == 2  # the two forged links
    assert bench.env.coord.store.peer_ids_of(bench.node_ids["node-a"]) == [bench.peers["node-a"]]
    assert bench.env.coord.store.renewal_links_from([bench.peers["node-a"]]) == []
    # Positive control: the same renewal with the old key's link and the new key's statement.
    r = _renew_request(bench, {"csr": csr, "renewal_link": link, "wallet_statement": statement})
    assert r.status_code == 200, r.text
    assert bench.env.coord.store.renewal_links_from([bench.peers["node-a"]]) == [link]


def test_a_renewed_node_is_paid_for_work_signed_by_either_key(bench: Bench) -> None:
    """F1/A7: jobs dispatched before the agent's own renewal (new key, its statement, the old key's link)
    are paid to the node's wallet whether the old key or the new one signs the proof, and so is a job
    dispatched after it. With the link deleted by the coordinator, the old key's proof finds no statement
    it vouches for: the node goes unpaid for it (the coordinator can deny pay, never redirect it)."""
    before = [bench.dispatch("node-a") for _ in range(3)]
    renewed = renew(bench.settings("node-a", bench.honest))  # the agent: link + statement, new key
    assert renewed.cert is not None and renewed.key is not None
    new_peer = peer_id(load_certificate(renewed.cert))
    stored = bench.env.coord.store.wallet_statement(bench.node_ids["node-a"])
    assert stored is not None and stored["statement"]["peer_id"] == new_peer != bench.peers["node-a"]
    [link] = bench.env.coord.store.renewal_links_from([bench.peers["node-a"]])
    assert link["link"]["new_peer_id"] == new_peer

    settled = bench.verify(before[0], signed_by="node-a")  # the old key signs
    assert new_peer in _check(settled.report, "payout-wallet")["reason"]
    _paid(bench, settled, total=AMOUNT)
    bench.identity["renewed"] = (renewed.cert, renewed.key)
    _paid(bench, bench.verify(before[1], signed_by="renewed"), total=2 * AMOUNT)  # the new key signs
    _paid(bench, bench.settle("node-a", signed_by="renewed"), total=3 * AMOUNT)  # dispatched after

    bench.sql(renewal_links.delete())
    settled = bench.verify(before[2], signed_by="node-a")
    assert settled.wallet == bench.honest and settled.verdict == "fail"
    assert "not by the key that signed" in _check(settled.report, "payout-wallet")["reason"]
    with pytest.raises(ReportVerdictError):
        bench.pay(settled)
    assert bench.world.token(bench.world.node) == 3 * AMOUNT
