"""``python -m tests.ledger._verifier_hook serve``: the verifier service with a stand-in verification hook.

The hook returns the verdict the body asks for (``verdict``, default ``pass``) about the body's job: the
tests need a verifier process that signs and records verdicts without a trained model (the real hook is
``tasks.verifier_service.verify_hook``, exercised end to end in tests/e2e).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def verify(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    report = {"job_id": body["job_id"], "passed": body.get("verdict", "pass") == "pass", "checks": []}
    return report, str(body.get("verdict", "pass"))


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
