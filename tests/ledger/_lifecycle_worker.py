"""Child process for the sweep crash tests: the lifecycle's escrow steps, SIGKILLed at a named point.

``python -m tests.ledger._lifecycle_worker CONFIG JOB_ID POINT REPORT``: lock (deadline already due, as
after the job's wall time), ``after_lock``; assign, ``after_dispatch``; the verifier's attestation in
hand, ``during_verification``; release, killed after the send (``during_release``).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from pathlib import Path

from cyxwiz.ledger.config import LedgerConfig, open_ledger


def main(config_path: str, job_id: str, point: str, report: str, peer: str) -> None:
    config = LedgerConfig.from_file(Path(config_path))

    def kill(reached: str) -> None:
        if reached == point:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9: no rollback hook, no except block runs

    releasing = []  # the ledger's own fault points fire on every move: only the release's count here
    ledger = open_ledger(
        config, fault=lambda p: kill("during_release") if releasing and p == "after_send" else None
    )
    due = dt.datetime.now(dt.UTC)
    ledger.create(
        job_id=job_id, user=config.load_key("user"), amount=5 * config.minimum_payment, deadline=due,
        run_id=f"run-{job_id}",
    )  # fmt: skip
    kill("after_lock")
    node = config.load_key("node").pubkey()
    ledger.assign(job_id=job_id, node_wallet=node, node_peer_id=peer, deadline=due)
    kill("after_dispatch")
    kill("during_verification")
    releasing.append(True)
    ledger.release(job_id=job_id, node_wallet=node, report=report)
    raise SystemExit(f"the kill point {point!r} was never reached")


if __name__ == "__main__":
    main(*sys.argv[1:6])
