"""Submission-to-escrow-locked latency: the user's client signs the lock vs the control plane signing it.

Same run, same local ledger service (LiteSVM behind JSON-RPC, as the embedded stack runs it), same
SQLite intent log, alternating so drift hits both. Today's server-side path (before issue 16) unsealed
the user's key file in the control plane and built, signed, sent and confirmed the lock
(``EscrowLedger.create``). The user-side path is what a submission does now: the client fetches the
public terms (blockhash; rent once), unseals *its own* wallet, builds and signs the lock message; the
control plane re-checks the exact message, adds the fee payer's signature and sends it
(``lock_signed`` → ``EscrowLedger.create_signed``). Goal: user-side ÷ server-side latency <= 1.2.

Two ratios: with the sealed key opened on each submission (Argon2id, as both paths really do), and with
the key already open (the bookkeeping and checks alone, the stricter comparison).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from solders.keypair import Keypair

from cyxwiz.ids import new_job_id
from cyxwiz.ledger import provision
from cyxwiz.ledger.client_funding import lock_signed, sign_funding, terms_from_chain
from cyxwiz.ledger.embedded import start_local_ledger
from cyxwiz.ledger.keystore import load_keypair, write_keypair
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.rpc import RpcChain
from cyxwiz.ledger.store import EscrowStore

N = 40
AMOUNT = 5_000
PASSPHRASE = b"bench-wallet-passphrase"


def _job() -> str:
    return new_job_id()


def run() -> list[tuple[str, float, str]]:
    with tempfile.TemporaryDirectory() as tmp, start_local_ledger(Path(tmp) / "service") as service:
        chain = RpcChain(url=service.rpc_url)
        payer, coordinator, verifier, arbiter, minter, user = (Keypair() for _ in range(6))
        for wallet in (payer, user):
            chain.airdrop(wallet.pubkey(), 100 * 10**9)
        multisig = provision.create_multisig(
            chain, payer=payer, authorities=[coordinator.pubkey(), verifier.pubkey(), arbiter.pubkey()]
        )
        mint = provision.create_test_mint(chain, payer=payer, mint_authority=minter.pubkey())
        provision.fund_wallet(
            chain, payer=payer, mint=mint, wallet=user.pubkey(), amount=10**12, mint_authority=minter
        )
        key_file = Path(tmp) / "user.key"
        write_keypair(key_file, user, passphrase=PASSPHRASE)
        ledger = EscrowLedger(
            chain=chain, store=EscrowStore.open(f"sqlite:///{Path(tmp) / 'escrow.db'}"), mint=mint,
            decimals=6, multisig=multisig, payer=payer, coordinator=coordinator,
            minimum_payment=1,
        )  # fmt: skip

        def server_side(unseal: bool) -> float:
            started = time.perf_counter()
            key = load_keypair(key_file, passphrase=PASSPHRASE) if unseal else user
            ledger.create(job_id=_job(), user=key, amount=AMOUNT)
            return time.perf_counter() - started

        def user_side(unseal: bool) -> float:
            started = time.perf_counter()
            job_id = _job()
            terms = terms_from_chain(  # what GET /v1/wallet/terms serves the client
                chain, mint=mint, decimals=6, multisig=multisig, payer=payer.pubkey(), minimum_payment=1
            )
            key = load_keypair(key_file, passphrase=PASSPHRASE) if unseal else user
            funding = sign_funding(terms, wallet=key, job_id=job_id, amount=AMOUNT, user="bench-user")
            lock_signed(ledger, funding, amount=AMOUNT, user="bench-user")
            return time.perf_counter() - started

        results = []
        for unseal, label in ((False, "key open"), (True, "key unsealed per lock")):
            server_side(unseal), user_side(unseal)  # warm both paths
            server: list[float] = []
            client: list[float] = []
            for _ in range(N if not unseal else N // 4):
                server.append(server_side(unseal))
                client.append(user_side(unseal))
            s, c = statistics.median(server), statistics.median(client)
            results.append(
                (
                    f"user-signed/server-signed lock ({label})",
                    c / s,
                    f"median {c * 1000:.1f} ms vs {s * 1000:.1f} ms over {len(server)} locks each; "
                    "goal <= 1.2",
                )
            )
        ledger.close()
        return results


if __name__ == "__main__":
    for name, ratio, why in run():
        print(f"{name:<50} {ratio:.3f}  {why}")
