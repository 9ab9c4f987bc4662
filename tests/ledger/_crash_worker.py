"""Child process for the crash tests: performs one escrow move and SIGKILLs itself at a named point.

Run as ``python -m tests.ledger._crash_worker CONFIG OP JOB_ID POINT [REPORT]`` with CYXWIZ_LEDGER_PASSPHRASE
set; the verifier service co-signs from its own process (the config names its socket).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from cyxwiz.ledger.config import LedgerConfig, open_ledger
from cyxwiz.ledger.keystore import load_keypair, passphrase_from_env


def main(config_path: str, op: str, job_id: str, point: str, report: str = "") -> None:
    config = LedgerConfig.from_file(Path(config_path))

    def fault(reached: str) -> None:
        if reached == point:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9: no cleanup, no except blocks run

    ledger = open_ledger(config, fault=fault)
    if op == "create":
        user_key = config.key_path("user")
        assert user_key is not None
        user = load_keypair(user_key, passphrase=passphrase_from_env())
        ledger.create(job_id=job_id, user=user, amount=5 * config.minimum_payment)
    elif op == "release":
        record = ledger.status(job_id=job_id)
        assert record.node_wallet is not None
        ledger.release(job_id=job_id, node_wallet=record.node_wallet, report=report)
    elif op == "refund":
        ledger.refund(job_id=job_id)
    elif op == "slash":
        from cyxwiz.ledger.stake import StakeLedger

        StakeLedger(ledger=ledger, policy=config.stake_policy()).slash(job_id=job_id, report=report)
    raise SystemExit(f"the fault point {point!r} was never reached")


if __name__ == "__main__":
    main(*sys.argv[1:6])
