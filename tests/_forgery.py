"""Forging a node's training trace: test code only (the verification tests and the test-only dishonest
node flow of the redundant-mode e2e). The edit is made internally consistent, so that only the
verifier's training checks (replay, referee) can tell (SPEC F1, threat "malicious node").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def rechain(out: Path, rewrite: Callable[[int, dict[str, Any]], dict[str, Any] | None]) -> None:
    """Rewrite the checkpoints ``rewrite`` returns new tensors for (None: unchanged), then re-hash and
    re-chain every commitment and deliver the model of the last checkpoint."""
    from safetensors.torch import load_file, save_file

    from cyxwiz.verification.commitments import (
        COMMITMENTS_FILE,
        GENESIS,
        Commitment,
        read_commitments,
        write_commitments,
    )

    old = read_commitments(out / COMMITMENTS_FILE)
    new: list[Commitment] = []
    prev = GENESIS
    for c in old:
        path = out / c.path
        tensors = load_file(str(path))
        changed = rewrite(c.step, tensors)
        if changed is not None:
            save_file(changed, str(path), metadata={"step": str(c.step)})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        commitment = Commitment(
            step=c.step,
            weights_sha256=digest,
            batch_indices_sha256=c.batch_indices_sha256,
            prev=prev,
            path=c.path,
        )
        new.append(commitment)
        prev = commitment.digest()
    write_commitments(out / COMMITMENTS_FILE, new)
    last = load_file(str(out / new[-1].path))
    save_file(
        {k.removeprefix("model."): v for k, v in last.items() if k.startswith("model.")},
        str(out / "model.safetensors"),
    )
