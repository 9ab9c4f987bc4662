"""Anchoring checkpoints on the ledger (SPEC H4, issue 19): the log's root, where nobody can rewrite it.

At least hourly (the ``audit-anchor`` flow) the latest signed checkpoint's tree size and root hash go on
chain in a memo transaction paid and signed by a dedicated low-value key (it holds only fee money, so
its theft costs nothing but the anchors' authority)::

    cyxwiz:audit-anchor:v1:<origin>:<tree size>:<base64 root>

Each anchor is also kept in ``anchors.jsonl`` beside the log, with the signed transaction's bytes.
``cyxwiz audit verify --anchors`` checks each one: the transaction is signed by the *pinned* anchor key,
its memo names this (size, root), the ledger knows the signature as confirmed and successful — a
transaction signature commits to its whole message, memo included — and the log, recomputed from its
records, has that root at that size. A rewritten log then contradicts a root an outsider can read on
chain, even if the attacker also holds the audit key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.audit.checkpoint import verify_checkpoint
from cyxwiz.audit.signer import read_latest_checkpoint
from cyxwiz.errors import AuditError, AuditIntegrityError, LedgerError
from cyxwiz.shared_dir import file_mode

if TYPE_CHECKING:
    from solders.keypair import Keypair
    from solders.pubkey import Pubkey

    from cyxwiz.audit.report import VerifyReport
    from cyxwiz.ledger.chain import Chain

ANCHORS_FILE = "anchors.jsonl"
MEMO_PREFIX = "cyxwiz:audit-anchor:v1"
#: The ``audit-anchor`` flow runs hourly; a confirmed anchor older than this is overdue.
ANCHOR_INTERVAL_S = 3600


@dataclass(frozen=True)
class Anchor:
    size: int
    root: bytes
    origin: str
    signature: str
    tx: bytes
    anchored_at: str
    payer: str

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": base64.b64encode(self.root).decode("ascii"),
            "origin": self.origin,
            "signature": self.signature,
            "tx": base64.b64encode(self.tx).decode("ascii"),
            "anchored_at": self.anchored_at,
            "payer": self.payer,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Anchor:
        return cls(
            size=int(data["size"]),
            root=base64.b64decode(str(data["root"]), validate=True),
            origin=str(data["origin"]),
            signature=str(data["signature"]),
            tx=base64.b64decode(str(data["tx"]), validate=True),
            anchored_at=str(data["anchored_at"]),
            payer=str(data["payer"]),
        )


def memo_text(origin: str, size: int, root: bytes) -> str:
    return f"{MEMO_PREFIX}:{origin}:{size}:{base64.b64encode(root).decode('ascii')}"


def read_anchors(directory: Path) -> list[Anchor]:
    path = Path(directory) / ANCHORS_FILE
    if not path.exists():
        return []
    anchors = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            anchors.append(Anchor.from_json(json.loads(raw)))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise AuditIntegrityError(
                f"line {lineno} is not an anchor record", path=str(path), rule="H4"
            ) from None
    return anchors


def anchor_latest(
    directory: Path,
    *,
    chain: Chain,
    payer: Keypair,
    public_key: Ed25519PublicKey,
    timeout_s: float = 30.0,
) -> Anchor | None:
    """Put the latest checkpoint's root on chain (memo from ``payer``); None if it is anchored already.

    The checkpoint is verified with the log's pinned key first: only what the log signed is anchored.
    """
    from cyxwiz.ledger import txbuild

    directory = Path(directory)
    note = read_latest_checkpoint(directory)
    if note is None:
        return None  # nothing written yet
    cp = verify_checkpoint(note, public_key=public_key)
    done = read_anchors(directory)
    if done and done[-1].size >= cp.size:
        return None
    text = memo_text(cp.origin, cp.size, cp.root)
    blockhash, _ = chain.latest_blockhash()
    tx = txbuild.sign([txbuild.memo(payer.pubkey(), text)], payer=payer, signers=(), blockhash=blockhash)
    raw = bytes(tx)
    signature = chain.send_raw(raw)
    deadline = time.monotonic() + timeout_s
    while (status := chain.signature_status(signature)) is None:
        if time.monotonic() > deadline:
            raise LedgerError(f"anchor transaction {signature} not confirmed in {timeout_s:.0f} s", rule="H4")
        time.sleep(0.05)
    if status.err is not None:
        raise LedgerError(f"anchor transaction failed: {status.err}", rule="H4")
    anchor = Anchor(
        size=cp.size,
        root=cp.root,
        origin=cp.origin,
        signature=signature,
        tx=raw,
        anchored_at=datetime.now(UTC).isoformat(),
        payer=str(payer.pubkey()),
    )
    line = json.dumps(anchor.to_json(), sort_keys=True).encode() + b"\n"
    fd = os.open(
        directory / ANCHORS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, file_mode(directory)
    )
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return anchor


def check_anchor_tx(anchor: Anchor, *, anchor_key: Pubkey) -> str | None:
    """Offline part: the stored transaction is signed by the pinned anchor key and its memo names the
    anchored (origin, size, root). None when it holds, else why not."""
    from solders.transaction import Transaction
    from spl.memo.constants import MEMO_PROGRAM_ID

    try:
        tx = Transaction.from_bytes(anchor.tx)
    except ValueError:
        return "stored anchor transaction does not parse"
    keys = tx.message.account_keys
    if not keys or keys[0] != anchor_key:
        return "anchor transaction is not paid and signed by the pinned anchor key"
    if str(tx.signatures[0]) != anchor.signature:
        return "anchor record names another transaction signature"
    try:
        tx.verify()
    except Exception:  # solders raises its own signature error type
        return "anchor transaction signature does not verify"
    wanted = memo_text(anchor.origin, anchor.size, anchor.root).encode()
    memos = [bytes(ix.data) for ix in tx.message.instructions if keys[ix.program_id_index] == MEMO_PROGRAM_ID]
    if memos != [wanted]:
        return "anchor transaction's memo does not name this checkpoint"
    return None


def check_anchors(
    directory: Path, *, chain: Chain, anchor_key: Pubkey
) -> tuple[list[tuple[int, bytes, str]], list[tuple[str, str]]]:
    """Every kept anchor, checked offline and against the ledger. Returns the (size, root, source) the
    log must still match, and (source, why) for every anchor that fails."""
    good: list[tuple[int, bytes, str]] = []
    bad: list[tuple[str, str]] = []
    try:
        anchors = read_anchors(directory)
    except AuditIntegrityError as exc:
        return [], [(ANCHORS_FILE, exc.message)]
    for index, anchor in enumerate(anchors, start=1):
        source = f"{ANCHORS_FILE}:{index}"
        why = check_anchor_tx(anchor, anchor_key=anchor_key)
        if why is None:
            status = chain.signature_status(anchor.signature)
            if status is None:
                why = "the ledger does not know the anchor transaction"
            elif status.err is not None:
                why = f"the anchor transaction failed on the ledger: {status.err}"
        if why is None:
            good.append((anchor.size, anchor.root, f"{source} (on chain {anchor.signature[:16]}…)"))
        else:
            bad.append((source, why))
    return good, bad


def anchored_count(directory: Path) -> int:
    try:
        return len(read_anchors(directory))
    except (AuditError, OSError):
        return 0


def verify_with_anchors(
    directory: Path,
    *,
    public_key: Ed25519PublicKey,
    anchor_key: Pubkey,
    rpc_url: str,
    checkpoints: Sequence[bytes] = (),
) -> VerifyReport:
    """``cyxwiz audit verify --anchors``: the whole log, the checkpoints kept, and every anchor."""
    from cyxwiz.audit.report import Kind, Problem
    from cyxwiz.audit.verify import verify_log
    from cyxwiz.ledger.rpc import RpcChain

    chain = RpcChain(url=rpc_url)
    try:
        good, bad = check_anchors(directory, chain=chain, anchor_key=anchor_key)
    finally:
        chain.close()
    report = verify_log(directory, public_key=public_key, checkpoints=checkpoints, anchored=good)
    report.problems.extend(Problem(Kind.ANCHOR, source, None, why) for source, why in bad)
    report.anchors_checked = len(good) + len(bad)
    return report
