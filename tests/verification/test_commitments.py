"""Checkpoint commitment chain and its Merkle root."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cyxwiz.errors import VerificationError
from cyxwiz.verification.commitments import (
    GENESIS,
    Commitment,
    check_chain,
    commitments_root,
    merkle_root,
    read_commitments,
    write_commitments,
)


def chain(n: int) -> list[Commitment]:
    out: list[Commitment] = []
    prev = GENESIS
    for i in range(n):
        c = Commitment(
            step=i * 5,
            weights_sha256=f"{i:064x}",
            batch_indices_sha256=f"{i + 100:064x}",
            prev=prev,
            path=f"checkpoints/step-{i * 5:08d}.safetensors",
        )
        out.append(c)
        prev = c.digest()
    return out


def test_rfc6962_shapes() -> None:
    a, b, c = (hashlib.sha256(x).digest() for x in (b"a", b"b", b"c"))
    node = lambda left, right: hashlib.sha256(b"\x01" + left + right).digest()  # noqa: E731
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()
    assert merkle_root([a]) == a.hex()
    assert merkle_root([a, b, c]) == node(node(a, b), c).hex()


def test_root_changes_with_any_commitment() -> None:
    base = chain(7)
    root = commitments_root(base)
    for i in range(7):
        changed = list(base)
        changed[i] = Commitment(**{**base[i].to_dict(), "weights_sha256": "f" * 64})
        assert commitments_root(changed) != root
    assert commitments_root(base[:-1]) != root
    assert commitments_root([base[1], base[0], *base[2:]]) != root


def test_chain_detects_a_missing_segment() -> None:
    good = chain(5)
    check_chain(good)
    with pytest.raises(VerificationError) as info:
        check_chain([*good[:2], *good[3:]])
    assert info.value.field == "commitments[2].prev"


def test_file_round_trip_and_malformed_input(tmp_path: Path) -> None:
    path = tmp_path / "commitments.json"
    write_commitments(path, chain(3))
    assert read_commitments(path) == chain(3)
    path.write_text('[{"step": -1}]')
    with pytest.raises(VerificationError):
        read_commitments(path)
    path.write_text("not json")
    with pytest.raises(VerificationError):
        read_commitments(path)


def test_fast_canonical_form_is_the_generic_encoders() -> None:
    from cyxwiz.verification.canonical import canonical_json
    from cyxwiz.verification.commitments import Commitment

    base = {"step": 40, "weights_sha256": "a" * 64, "batch_indices_sha256": "b" * 64, "prev": "c" * 64}
    for path in ("checkpoints/step-00000040.safetensors", 'odd "name".safetensors', "ü/x", "a\\b"):
        c = Commitment(path=path, **base)  # type: ignore[arg-type]
        assert c.canonical == canonical_json(c.to_dict())
    huge = Commitment(path="p", **{**base, "step": 2**60})  # type: ignore[arg-type]
    assert huge.canonical == canonical_json(huge.to_dict())  # beyond 2**53: the generic rules apply
