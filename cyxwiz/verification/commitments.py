"""Checkpoint commitments and their Merkle root (proof-of-learning style, ARCHITECTURE step 4–5).

Every ``checkpoint_every`` steps the runtime writes a checkpoint and commits to it: the SHA-256 of the
checkpoint file, the SHA-256 of the batch indices used since the previous checkpoint, and the hash of
the previous commitment (a chain, so none can be dropped or reordered unnoticed). The completion proof
signs the Merkle root (RFC 6962 tree hashing) over all commitments. Pure stdlib: it runs in the sandbox.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cyxwiz.errors import VerificationError
from cyxwiz.verification.canonical import canonical_json

GENESIS = "0" * 64
_PLAIN = re.compile(r"[A-Za-z0-9._/-]{1,512}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
COMMITMENTS_FILE = "commitments.json"


@dataclass(frozen=True)
class Commitment:
    step: int
    weights_sha256: str
    batch_indices_sha256: str
    #: Hash of the previous commitment (``GENESIS`` for the first, at step 0).
    prev: str
    #: The checkpoint file, relative to the output directory.
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @functools.cached_property
    def canonical(self) -> bytes:
        """RFC 8785 bytes of this commitment; the chain digest and the Merkle leaf both hash them."""
        if (
            type(self.step) is int
            and 0 <= self.step <= 2**53
            and _PLAIN.fullmatch(self.path)
            and all(_HEX64.fullmatch(v) for v in (self.weights_sha256, self.batch_indices_sha256, self.prev))
        ):
            # The usual case spelled out (keys in JCS order, nothing to escape): a verifier checks
            # thousands of these, and the generic encoder costs more than the hashing.
            return (
                f'{{"batch_indices_sha256":"{self.batch_indices_sha256}","path":"{self.path}",'
                f'"prev":"{self.prev}","step":{self.step},"weights_sha256":"{self.weights_sha256}"}}'
            ).encode()
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        return hashlib.sha256(self.canonical).hexdigest()

    @classmethod
    def from_dict(cls, data: object, *, where: str = "commitment") -> Commitment:
        if not isinstance(data, dict) or set(data) != {
            "step",
            "weights_sha256",
            "batch_indices_sha256",
            "prev",
            "path",
        }:
            raise VerificationError("malformed commitment", field=where)
        step = data["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise VerificationError("step must be a non-negative integer", field=f"{where}.step")
        for key in ("weights_sha256", "batch_indices_sha256", "prev"):
            value = data[key]
            if not (
                isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
            ):
                raise VerificationError("not a hex SHA-256", field=f"{where}.{key}")
        if not isinstance(data["path"], str):
            raise VerificationError("path must be a string", field=f"{where}.path")
        return cls(
            step=step,
            weights_sha256=data["weights_sha256"],
            batch_indices_sha256=data["batch_indices_sha256"],
            prev=data["prev"],
            path=data["path"],
        )


def leaf_hash(commitment: Commitment) -> bytes:
    return hashlib.sha256(b"\x00" + commitment.canonical).digest()


def merkle_root(leaves: Sequence[bytes]) -> str:
    """RFC 6962 Merkle tree hash (hex) of already-hashed leaves; the empty tree is SHA-256 of nothing."""
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return _mth(list(leaves)).hex()


def _mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two below n
    return hashlib.sha256(b"\x01" + _mth(leaves[:split]) + _mth(leaves[split:])).digest()


def commitments_root(commitments: Sequence[Commitment]) -> str:
    return merkle_root([leaf_hash(c) for c in commitments])


def write_commitments(path: Path, commitments: Sequence[Commitment]) -> None:
    path.write_text(json.dumps([c.to_dict() for c in commitments], indent=1) + "\n", encoding="utf-8")


def read_commitments(path: Path) -> list[Commitment]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"cannot read commitments: {exc}", path=str(path)) from None
    if not isinstance(data, list):
        raise VerificationError("commitments must be a JSON list", path=str(path))
    return [Commitment.from_dict(item, where=f"commitments[{i}]") for i, item in enumerate(data)]


def check_chain(commitments: Sequence[Commitment]) -> None:
    """Each commitment must name its predecessor's digest; raises VerificationError at the first break."""
    prev = GENESIS
    for i, c in enumerate(commitments):
        if c.prev != prev:
            raise VerificationError(
                f"commitment at step {c.step} does not follow the previous one",
                field=f"commitments[{i}].prev",
            )
        prev = c.digest()
