"""Child process for the host rounds test: asks statuses through a shared file, prints what went wrong.

Run as ``python -m tests.ledger._hostrounds_worker PATH SEED``; prints ``WRONG CALLS`` (statuses that were
not the signature's own, and the calls this process led). With ``hang`` after the seed it leads one round
whose call never returns (it prints ``leading`` first): the kill -9 test's victim.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

from solders.keypair import Keypair

from cyxwiz.ledger.chain import SignatureStatus
from cyxwiz.ledger.hostrounds import HostStatuses


def expected(signature: str) -> SignatureStatus | None:
    digest = hashlib.sha256(signature.encode()).digest()
    return None if digest[0] % 3 == 0 else SignatureStatus(slot=digest[1], err=f"Custom({digest[2]})")


def hang(path: str) -> None:
    def fetch(signatures: list[str]) -> list[SignatureStatus | None]:
        print("leading", flush=True)
        time.sleep(600)
        return [None for _ in signatures]

    HostStatuses(path=Path(path), fetch=fetch)([str(Keypair().sign_message(b"victim"))])


def main(path: str, seed: int) -> None:
    def fetch(signatures: list[str]) -> list[SignatureStatus | None]:
        time.sleep(0.003)  # a round trip
        return [expected(sig) for sig in signatures]

    host = HostStatuses(path=Path(path), fetch=fetch)
    rng = random.Random(seed)
    pool = [str(Keypair().sign_message(bytes([seed, i]))) for i in range(8)]
    wrong = 0
    for _ in range(40):
        mine = rng.sample(pool, rng.randint(1, 3))
        wrong += sum(1 for sig, got in zip(mine, host(mine), strict=True) if got != expected(sig))
    print(wrong, host.calls, flush=True)
    host.close()


if __name__ == "__main__":
    if sys.argv[3:] == ["hang"]:
        hang(sys.argv[1])
    else:
        main(sys.argv[1], int(sys.argv[2]))
