"""``python -m tests.ledger._verifier_hook serve``: the verifier service with a stand-in verification hook.

The hook returns the verdict the body asks for (``verdict``, default ``pass``) about the body's job: the
tests need a verifier process that signs and records verdicts without a trained model (the real hook is
``tasks.verifier_service.verify_hook``, exercised end to end in tests/e2e).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

#: A file the hook appends each verified job id to; seconds each verification takes (restart tests).
CALLS_ENV, SLOW_ENV = "CYXWIZ_TEST_VERIFY_CALLS", "CYXWIZ_TEST_VERIFY_SLOW_S"


def verify(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    calls = os.environ.get(CALLS_ENV)
    if calls:  # restart tests count the verifications actually run, and may make each one take a while
        with open(calls, "a", encoding="utf-8") as log:
            log.write(f"{body['job_id']}\n")
        time.sleep(float(os.environ.get(SLOW_ENV) or 0))
    verdict = str(body.get("verdict", "pass"))
    check = {"name": "stand-in", "passed": verdict == "pass", "reason": f"the request asked for {verdict}"}
    report = {"job_id": body["job_id"], "passed": verdict == "pass", "checks": [check]}
    return report, verdict


def main(argv: list[str]) -> None:
    from cyxwiz.ledger.verifier_cli import run

    args = dict(zip(argv[1::2], argv[2::2], strict=False))
    ready = args.get("--ready-file")
    socket = args.get("--socket")
    run(
        Path(args["--config"]),
        Path(socket) if socket else None,
        Path(ready) if ready else None,
        verify=verify,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
