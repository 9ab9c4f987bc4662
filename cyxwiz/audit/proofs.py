"""Inclusion and consistency proofs out of a log directory, and their offline check (SPEC H4).

A *proof bundle* is a JSON object anyone can check with nothing but the audit key's public half:

``inclusion``: ``{"type": "inclusion", "event_id", "seq", "record": <the exact line>, "leaf_hash",
"tree_size", "root", "proof": [base64 …], "checkpoint": <signed note>}``

``consistency``: ``{"type": "consistency", "old": <signed note>, "new": <signed note>, "proof": [...]}``

:func:`check_bundle` verifies one: the checkpoint signature(s) by the pinned key, then the pure RFC 9162
verifiers of :mod:`cyxwiz.audit.merkle`. No log access.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cyxwiz.audit.checkpoint import Checkpoint, verify_checkpoint
from cyxwiz.audit.merkle import consistency_proof, inclusion_proof, verify_consistency, verify_inclusion
from cyxwiz.audit.reader import day_files, read_file_bytes, split_lines
from cyxwiz.audit.records import CHECKPOINT_FILE, RecordFormatError, leaf_of, parse_line
from cyxwiz.audit.tree import TREE_FILE, MappedTree
from cyxwiz.errors import AuditError, AuditIntegrityError, NotFoundError, ValidationError

_LEAF_HEX = re.compile(r"[0-9a-f]{64}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class FoundRecord:
    seq: int
    raw: bytes
    event: dict[str, Any]

    @property
    def leaf(self) -> bytes:
        return leaf_of(self.raw)


def _records_newest_first(directory: Path) -> Iterator[FoundRecord]:
    for files in reversed(list(day_files(directory).values())):
        if files.data is None:
            continue
        for _, raw, terminated in reversed(list(split_lines(read_file_bytes(files.data)))):
            if not terminated:
                continue
            try:
                rec = parse_line(raw)
            except RecordFormatError:
                continue
            yield FoundRecord(seq=rec.seq, raw=raw, event=rec.event)


def find_record(directory: Path, event_id: str) -> FoundRecord:
    """The record of ``event_id``: an event's ``event_id``, ``seq:N`` (or a bare sequence number), or a
    64-hex leaf hash (what an escrow memo's ``audit=`` cites; it is also the record's chain hash)."""
    wanted_seq: int | None = None
    text = event_id.removeprefix("seq:")
    if text.isdigit():
        wanted_seq = int(text)
    leaf = event_id.lower() if _LEAF_HEX.fullmatch(event_id.lower()) else None
    for found in _records_newest_first(directory):
        if (
            (wanted_seq is not None and found.seq == wanted_seq)
            or found.event.get("event_id") == event_id
            or (leaf is not None and found.raw[9:73].decode("ascii", "replace") == leaf)
        ):
            return found
    raise NotFoundError(f"no record with event id {event_id!r} in the local log", path=str(directory))


def leaf_hash_of(directory: Path, event_id: str) -> str:
    """The hex RFC 6962 leaf hash of the record of ``event_id``: what an escrow memo cites, and what
    ``cyxwiz audit prove`` proves included under a signed checkpoint."""
    return find_record(Path(directory), event_id).leaf.hex()


def latest_checkpoint(directory: Path) -> bytes:
    from cyxwiz.audit.signer import read_latest_checkpoint

    note = read_latest_checkpoint(directory)
    if note is None:
        raise NotFoundError("the log has no signed checkpoint yet", path=str(directory / CHECKPOINT_FILE))
    return note


def _note_size(note: bytes) -> int:
    try:
        return int(note.split(b"\n")[1])
    except (IndexError, ValueError):
        raise AuditIntegrityError("not a checkpoint note", field="checkpoint", rule="H4") from None


def prove_inclusion(directory: Path, event_id: str, *, checkpoint: bytes | None = None) -> dict[str, Any]:
    """The inclusion bundle of ``event_id`` under ``checkpoint`` (default: the latest the log signed)."""
    directory = Path(directory)
    note = checkpoint if checkpoint is not None else latest_checkpoint(directory)
    size = _note_size(note)
    found = find_record(directory, event_id)
    if found.seq > size:
        raise AuditError(
            f"seq {found.seq} is newer than the checkpoint (size {size}); retry after the next one "
            "(at most a second)",
            field="event_id",
        )
    with MappedTree(directory / TREE_FILE) as tree:
        if tree.size < size:
            raise AuditIntegrityError("the stored tree is smaller than the checkpoint", path=str(tree.path))
        if tree.leaf(found.seq - 1) != found.leaf:
            raise AuditIntegrityError(
                f"record seq {found.seq} does not match its stored leaf; run `cyxwiz audit verify`",
                path=str(tree.path),
            )
        proof = inclusion_proof(tree, found.seq - 1, size)
    return {
        "type": "inclusion",
        "event_id": found.event.get("event_id"),
        "seq": found.seq,
        "record": found.raw.decode("utf-8"),
        "leaf_hash": found.leaf.hex(),
        "tree_size": size,
        "proof": [_b64(p) for p in proof],
        "checkpoint": note.decode("utf-8"),
    }


def prove_consistency(directory: Path, old: bytes, new: bytes) -> dict[str, Any]:
    """The consistency bundle from checkpoint ``old`` to checkpoint ``new`` (sizes from the notes)."""
    old_size, new_size = _note_size(old), _note_size(new)
    if old_size > new_size:
        raise ValidationError(f"OLD covers {old_size} records, more than NEW ({new_size})", field="OLD")
    with MappedTree(Path(directory) / TREE_FILE) as tree:
        if tree.size < new_size:
            raise AuditIntegrityError("the stored tree is smaller than NEW", path=str(tree.path))
        proof = consistency_proof(tree, old_size, new_size)
    return {
        "type": "consistency",
        "old": old.decode("utf-8"),
        "new": new.decode("utf-8"),
        "proof": [_b64(p) for p in proof],
    }


def _hashes(values: object) -> list[bytes]:
    if not isinstance(values, list):
        raise ValidationError("proof must be a list of base64 hashes", field="proof")
    try:
        return [base64.b64decode(str(v), validate=True) for v in values]
    except binascii.Error:
        raise ValidationError("proof holds something that is not base64", field="proof") from None


def check_bundle(bundle: dict[str, Any], *, public_key: Ed25519PublicKey) -> Checkpoint:
    """Verify a proof bundle offline with the pinned key; return the (newest) checkpoint it proves
    against. Raises :class:`AuditIntegrityError` naming what failed."""
    kind = bundle.get("type")
    if kind == "inclusion":
        cp = verify_checkpoint(str(bundle.get("checkpoint", "")).encode("utf-8"), public_key=public_key)
        record = str(bundle.get("record", "")).encode("utf-8")
        seq = bundle.get("seq")
        if not isinstance(seq, int) or seq < 1:
            raise ValidationError("seq must be a positive integer", field="seq")
        leaf = leaf_of(record)
        if bundle.get("leaf_hash") not in (None, leaf.hex()):
            raise AuditIntegrityError("leaf_hash is not the hash of the record", field="leaf_hash", rule="H4")
        if parse_line(record).seq != seq:
            raise AuditIntegrityError("the record's seq differs from the bundle's", field="seq", rule="H4")
        if not verify_inclusion(
            leaf=leaf, index=seq - 1, size=cp.size, proof=_hashes(bundle.get("proof")), root=cp.root
        ):
            raise AuditIntegrityError(
                "inclusion proof does not lead to the checkpoint's root", field="proof", rule="H4"
            )
        return cp
    if kind == "consistency":
        old = verify_checkpoint(str(bundle.get("old", "")).encode("utf-8"), public_key=public_key)
        new = verify_checkpoint(
            str(bundle.get("new", "")).encode("utf-8"), public_key=public_key, origin=old.origin
        )
        if not verify_consistency(
            old_size=old.size,
            new_size=new.size,
            old_root=old.root,
            new_root=new.root,
            proof=_hashes(bundle.get("proof")),
        ):
            raise AuditIntegrityError(
                f"checkpoint of size {old.size} is not a prefix of the one of size {new.size}",
                field="proof",
                rule="H4",
            )
        return new
    raise ValidationError("type must be inclusion or consistency", field="type")


def load_bundle(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError("no such proof file", path=str(path)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"not a JSON proof bundle ({exc})", path=str(path)) from None
    if not isinstance(data, dict):
        raise ValidationError("not a JSON proof bundle", path=str(path))
    return data
