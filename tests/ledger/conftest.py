"""Fixtures for the escrow ledger: a provisioned chain (mint, 2-of-3 multisig, funded user, node wallet)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cyxwiz.ledger import provision, txbuild
from cyxwiz.ledger.attestation import AttestationPolicy, ReportAttestation, Verdict, sign_attestation
from cyxwiz.ledger.chain import Chain, LocalChain
from cyxwiz.ledger.embedded import DemoLedger, LocalLedgerHandle, provision_demo, start_local_ledger
from cyxwiz.ledger.keystore import KdfParams
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.rpc import RpcChain
from cyxwiz.ledger.store import EscrowStore, IntentStatus
from cyxwiz.ledger.verifier_service import VerifierProcess, start_verifier_service
from cyxwiz.ledger.withdrawal import SignedStakeWithdrawal
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.peerid import peer_id

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "ledger-test-passphrase"
LAMPORTS_PER_SIGNATURE = 5000
#: The node's certificate key (fixed): its PeerID is the one escrows and stakes name; it signs the node's
#: stake withdrawals (an Ed25519 PeerID is its public key, issue 17).
NODE_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"cyxwiz escrow tests: node one").digest())
NODE_PEER = peer_id(NODE_KEY)
REPORT = {"job_id": "job-a", "passed": True, "checks": [], "proof_sha256": "ab" * 32, "summary": {}}


@dataclass(frozen=True)
class Pki:
    """The dev PKI's verifier certificate and key (role ``verifier``) and a worker's (not a verifier)."""

    root: Path
    policy: AttestationPolicy
    dev: Any

    def sign(self, *, role: str = "verifier", verdict: Verdict = "pass", **fields: str) -> ReportAttestation:
        from cyxwiz.pki.certs import load_certificate
        from cyxwiz.pki.keys import load_private_key

        cert_path, key_path = (
            (self.root / "certs" / "verifier-cert.pem", self.root / "certs" / "verifier-key.pem")
            if role == "verifier"
            else (self.root / "nodes" / "node-1-cert.pem", self.root / "nodes" / "node-1-key.pem")
        )
        key = load_private_key(key_path)
        return sign_attestation(
            key=key,  # type: ignore[arg-type]
            certificate=load_certificate(cert_path),
            verdict=verdict,
            **{"report_sha256": "cd" * 32, **fields},  # type: ignore[arg-type]
        )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(root: Path) -> Pki:
    """A dev PKI whose verifier certificate signs the reports releases need (other test packages)."""
    from cyxwiz.pki.devpki import build_dev_pki

    built = build_dev_pki(root, nodes=("node-1",))
    return Pki(
        root=built.root, policy=AttestationPolicy.from_files(built.bundle, crls=[built.crl]), dev=built
    )


@pytest.fixture
def demo(
    ledger_service: LocalLedgerHandle, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> DemoLedger:
    """A provisioned demo ledger (sealed keys, the verifier's under its own passphrase) on the service."""
    monkeypatch.setenv("CYXWIZ_LEDGER_PASSPHRASE", PASSPHRASE)
    demo = provision_demo(
        rpc_url=ledger_service.rpc_url,
        state_dir=tmp_path / "demo",
        passphrase=PASSPHRASE.encode(),
        user_funds=100_000_000,
        kdf=KdfParams.fast_for_tests(),
        pki=pki.dev,
    )
    monkeypatch.setenv("CYXWIZ_LEDGER_CONFIG", str(demo.config_path))
    return demo


@pytest.fixture
def verifier(demo: DemoLedger, tmp_path: Path) -> Iterator[VerifierProcess]:
    """The verifier service as its own process, holding the only copy of the verifier key in use."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CYXWIZ_LEDGER_PASSPHRASE", "CYXWIZ_ARBITER_PASSPHRASE")
    }
    env |= {"PYTHONPATH": str(REPO), **demo.verifier_env()}
    with start_verifier_service(
        config_path=demo.config_path, state_dir=tmp_path / "verifier", env=env
    ) as proc:
        yield proc


def demo_attest(pki: Pki, demo: DemoLedger, job_id: str, *, verdict: Verdict = "pass") -> str:
    """The verifier's attestation for a demo job bound to the demo node and that job's escrow."""
    config = demo.config
    escrow = txbuild.escrow_address(config.pubkey("payer"), job_id, demo.user.pubkey())
    return pki.sign(
        verdict=verdict,
        job_id=job_id,
        node_peer_id=NODE_PEER,
        node_wallet=str(demo.node.pubkey()),
        escrow=str(escrow),
    ).to_json()


def backdate_unstake(engine: Any, peer: str, at: dt.datetime) -> None:
    """The stake's cool-down started at ``at`` on the stake book's clock and on the verifier's (its book,
    table ``cyxwiz_verifier_unstakes``, shares ``engine``: the in-process verifier, or the verifier
    service's own file): time passing, in a test."""
    import sqlalchemy as sa

    from cyxwiz.ledger.stakebook import stakes
    from cyxwiz.ledger.verdicts import metadata, unstakes

    metadata.create_all(engine)
    with engine.begin() as conn:
        if sa.inspect(conn).has_table(stakes.name):
            conn.execute(stakes.update().where(stakes.c.peer_id == peer).values(unstake_requested_at=at))
        conn.execute(unstakes.delete().where(unstakes.c.stake_peer_id == peer))
        conn.execute(unstakes.insert().values(stake_peer_id=peer, requested_at=at))


USER_FUNDS = 1_000_000
MINIMUM = 1_000


@dataclass
class World:
    chain: Chain
    payer: Keypair
    coordinator: Keypair
    verifier: Keypair
    arbiter: Keypair
    mint_authority: Keypair
    mint: Pubkey
    multisig: Pubkey
    dispute_multisig: Pubkey
    pki: Pki
    user: Keypair
    node: Keypair
    other_node: Keypair
    db_url: str
    expire: Callable[[], object]
    ledgers: list[EscrowLedger] = field(default_factory=list)

    def ledger(self, **overrides: Any) -> EscrowLedger:
        kwargs: dict[str, Any] = {
            "chain": self.chain,
            "store": EscrowStore.open(self.db_url),
            "mint": self.mint,
            "decimals": 6,
            "multisig": self.multisig,
            "payer": self.payer,
            "coordinator": self.coordinator,
            "verifier": self.verifier,
            "arbiter": self.arbiter,
            "attestations": self.pki.policy,
            "dispute_multisig": self.dispute_multisig,
            "minimum_payment": MINIMUM,
            "confirm_timeout_s": 5.0,
        }
        kwargs.update(overrides)
        ledger = EscrowLedger(**kwargs)
        self.ledgers.append(ledger)
        return ledger

    def attest(self, job: str, *, verdict: Verdict = "pass", role: str = "verifier", **overrides: str) -> str:
        """A verifier attestation for ``job`` bound to the assigned node and its escrow (JSON)."""
        fields = {
            "job_id": job,
            "node_peer_id": NODE_PEER,
            "node_wallet": str(self.node.pubkey()),
            "escrow": str(txbuild.escrow_address(self.payer.pubkey(), job, self.user.pubkey())),
            **overrides,
        }
        return self.pki.sign(role=role, verdict=verdict, **fields).to_json()

    def withdrawal(
        self, wallet: Keypair | Pubkey, key: Ed25519PrivateKey = NODE_KEY, *, cert: bool = True, **fields: Any
    ) -> str:
        """The node's signed withdrawal (JSON) with the key's ``worker`` certificate of this world's PKI."""
        owner = wallet.pubkey() if isinstance(wallet, Keypair) else wallet
        pem = None
        stake = fields.get("stake_peer_id")
        if cert and stake is not None and stake != peer_id(key):  # renewed: same name, then the old one
            old = self.node_certificate(stake)
            name = load_certificate(old).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            pem = self.node_certificate(key, name=str(name)).read_text() + old.read_text()
        elif cert:
            pem = self.node_certificate(key).read_text()
        return SignedStakeWithdrawal.sign(key=key, wallet=str(owner), certificate=pem, **fields).to_json()

    def node_certificate(self, key: Ed25519PrivateKey | str, *, name: str | None = None) -> Path:
        """The ``worker`` certificate of ``key`` (a private key or a PeerID; issued once per world) by this
        world's issuing CA, under ``name`` (default: from the PeerID)."""
        from cyxwiz.pki.certs import write_certificate
        from cyxwiz.pki.peerid import public_key_from_peer_id

        peer = key if isinstance(key, str) else peer_id(key)
        path = self.pki.root / "nodes" / f"{peer}-cert.pem"
        if not path.exists():
            issued = self.pki.dev.issuing_ca().issue(
                common_name=name or f"node-{peer[-8:]}", role="worker",
                public_key=public_key_from_peer_id(peer),
            )  # fmt: skip
            write_certificate(path, issued.certificate)
        return path

    def expire_blockhash(self) -> None:
        self.expire()

    def token(self, wallet: Keypair | Pubkey) -> int:
        owner = wallet.pubkey() if isinstance(wallet, Keypair) else wallet
        return self.chain.token_amount(txbuild.token_account_of(owner, self.mint)) or 0

    def token_total(self, *job_ids: str) -> int:
        escrows = sum(
            (self.chain.token_amount(txbuild.escrow_address(self.payer.pubkey(), j, self.user.pubkey())) or 0)
            + (
                self.chain.token_amount(txbuild.dispute_address(self.payer.pubkey(), j, self.user.pubkey()))
                or 0
            )
            for j in job_ids
        )
        return self.token(self.user) + self.token(self.node) + self.token(self.other_node) + escrows

    def lamport_total(self, *job_ids: str) -> int:
        keys = [self.payer.pubkey(), self.user.pubkey(), self.node.pubkey(), self.other_node.pubkey()]
        keys += [txbuild.token_account_of(k, self.mint) for k in list(keys)]
        keys += [txbuild.escrow_address(self.payer.pubkey(), j, self.user.pubkey()) for j in job_ids]
        keys += [txbuild.dispute_address(self.payer.pubkey(), j, self.user.pubkey()) for j in job_ids]
        keys += [self.mint, self.multisig]
        return sum(self.chain.lamports(k) for k in keys)

    def fees(self, ledger: EscrowLedger) -> int:
        """Fees paid by every confirmed escrow transaction (a failed preflight costs nothing)."""
        total = 0
        for intent in ledger.store.intents(status=IntentStatus.CONFIRMED):
            total += LAMPORTS_PER_SIGNATURE * len(VersionedTransaction.from_bytes(intent.tx).signatures)
        return total


def build_world(
    chain: Chain,
    db_url: str,
    *,
    fund: Callable[[Pubkey, int], None],
    expire: Callable[[], object],
    pki: Pki,
) -> World:
    payer, coordinator, verifier, arbiter, mint_authority = (Keypair() for _ in range(5))
    fund(payer.pubkey(), 10_000_000_000)
    user, node, other_node = Keypair(), Keypair(), Keypair()
    fund(user.pubkey(), 1_000_000_000)
    multisig = provision.create_multisig(
        chain, payer=payer, authorities=[coordinator.pubkey(), verifier.pubkey(), arbiter.pubkey()]
    )
    dispute_multisig = provision.create_multisig(
        chain, payer=payer, authorities=[arbiter.pubkey(), verifier.pubkey()], threshold=2
    )
    mint = provision.create_test_mint(chain, payer=payer, mint_authority=mint_authority.pubkey())
    provision.fund_wallet(
        chain, payer=payer, mint=mint, wallet=user.pubkey(), amount=USER_FUNDS, mint_authority=mint_authority
    )
    for wallet in (node, other_node):
        provision.fund_wallet(chain, payer=payer, mint=mint, wallet=wallet.pubkey(), amount=0)
    return World(
        chain=chain,
        payer=payer,
        coordinator=coordinator,
        verifier=verifier,
        arbiter=arbiter,
        mint_authority=mint_authority,
        mint=mint,
        multisig=multisig,
        dispute_multisig=dispute_multisig,
        pki=pki,
        user=user,
        node=node,
        other_node=other_node,
        db_url=db_url,
        expire=expire,
    )


@pytest.fixture
def local_world(tmp_path: Path, pki: Pki) -> Iterator[World]:
    """In-process LiteSVM, SQLite store."""
    chain = LocalChain()
    world = build_world(
        chain,
        f"sqlite:///{tmp_path / 'escrow.db'}",
        fund=chain.airdrop,
        expire=chain.expire_blockhash,
        pki=pki,
    )
    yield world
    for ledger in world.ledgers:
        ledger.store.dispose()


@pytest.fixture(scope="module")
def ledger_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLedgerHandle]:
    """One local ledger service per test module (start-up costs ~1 s); tests use fresh keys and mints."""
    with start_local_ledger(tmp_path_factory.mktemp("ledger-service"), dev_methods=True) as handle:
        yield handle


@pytest.fixture
def rpc_world(ledger_service: LocalLedgerHandle, tmp_path: Path, pki: Pki) -> Iterator[World]:
    """Through the local ledger service over JSON-RPC (solana-py), SQLite store."""
    chain = RpcChain(url=ledger_service.rpc_url)
    world = build_world(
        chain,
        f"sqlite:///{tmp_path / 'escrow.db'}",
        fund=chain.airdrop,
        expire=lambda: chain.call("cyxwiz_expireBlockhash"),
        pki=pki,
    )
    yield world
    for ledger in world.ledgers:
        ledger.store.dispose()
    chain.close()


@pytest.fixture(params=["local", "rpc"])
def world(request: pytest.FixtureRequest) -> World:
    """Every escrow test runs on in-process LiteSVM and through the local ledger service."""
    fixture = "local_world" if request.param == "local" else "rpc_world"
    result: World = request.getfixturevalue(fixture)
    return result
