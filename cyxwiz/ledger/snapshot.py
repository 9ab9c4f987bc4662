"""The local ledger service's state file: touched accounts, signature statuses, block height.

One JSON document with a SHA-256 over its canonical body, written atomically (temp file, fsync, rename)
with mode 0600. A file that fails to parse or whose checksum does not match is refused: starting on a
half-written or edited snapshot would silently change balances (F2).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solders.account import Account

from cyxwiz.errors import LedgerError

FORMAT = "cyxwiz-ledger-snapshot"
VERSION = 1


class SnapshotCorruptError(LedgerError):
    """The snapshot file is unreadable, truncated or edited; the service will not start on it."""

    code = "ledger-snapshot-corrupt"


@dataclass
class SnapshotState:
    height: int
    accounts: dict[str, Account] = field(default_factory=dict)
    statuses: dict[str, tuple[int, str | None]] = field(default_factory=dict)


def _body(state: SnapshotState) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "height": state.height,
        "accounts": {k: base64.b64encode(bytes(a)).decode() for k, a in sorted(state.accounts.items())},
        "statuses": {k: [slot, err] for k, (slot, err) in sorted(state.statuses.items())},
    }


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def save(path: Path, state: SnapshotState) -> None:
    body = _body(state)
    document = {"body": body, "sha256": _digest(body)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> SnapshotState:
    def corrupt(why: str) -> SnapshotCorruptError:
        return SnapshotCorruptError(
            f"ledger snapshot is corrupt: {why}",
            path=str(path),
            rule="F2",
            hint="restore the file from a backup; the service refuses to guess balances",
        )

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        body = document["body"]
        if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("version") != VERSION:
            raise corrupt("unknown format or version")
        if document["sha256"] != _digest(body):
            raise corrupt("checksum mismatch")
        height = body["height"]
        if not isinstance(height, int) or height < 0:
            raise corrupt("bad height")
        accounts = {
            k: Account.from_bytes(base64.b64decode(v, validate=True)) for k, v in body["accounts"].items()
        }
        statuses: dict[str, tuple[int, str | None]] = {}
        for sig, (slot, err) in body["statuses"].items():
            if not isinstance(slot, int) or not (err is None or isinstance(err, str)):
                raise corrupt(f"bad status for {sig}")
            statuses[sig] = (slot, err)
    except SnapshotCorruptError:
        raise
    except Exception as exc:  # any parse failure (solders raises its own types) means corrupt
        raise corrupt(f"{type(exc).__name__}: {exc}") from None
    return SnapshotState(height=height, accounts=accounts, statuses=statuses)
