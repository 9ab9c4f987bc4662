"""Blocks register with a real Prefect server and round-trip save/load; none holds a secret (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError as PydanticValidationError

from blocks import (
    EscrowLedgerBlock,
    ObjectStoreBlock,
    PKIMaterialBlock,
    SandboxPolicyBlock,
    TokenSigningKeyBlock,
)

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_prefect_block_register_module(prefect_server: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6" in proc.stdout  # "Successfully registered 6 blocks"


def test_blocks_save_and_load(prefect_server: object, tmp_path: Path) -> None:
    PKIMaterialBlock(cert_path=tmp_path / "c.pem", key_path=tmp_path / "k.pem", ca_bundle_pem="b").save(
        "node-1", overwrite=True
    )
    TokenSigningKeyBlock(key_path=tmp_path / "k.pem").save("jwt", overwrite=True)
    EscrowLedgerBlock(rpc_url="http://127.0.0.1:9", minimum_payment=5).save("ledger", overwrite=True)
    ObjectStoreBlock(backend="local", root=tmp_path).save("store", overwrite=True)
    SandboxPolicyBlock(backend="bubblewrap", max_memory_mb=512).save("policy", overwrite=True)

    assert PKIMaterialBlock.load("node-1").key_path == tmp_path / "k.pem"
    assert EscrowLedgerBlock.load("ledger").minimum_payment == 5
    assert ObjectStoreBlock.load("store").root == tmp_path
    assert SandboxPolicyBlock.load("policy").max_memory_mb == 512
    assert TokenSigningKeyBlock.load("jwt").algorithm == "EdDSA"


def test_pki_block_materializes_pem_as_0600(tmp_path: Path) -> None:
    block = PKIMaterialBlock(cert_pem="CERT", key_path=tmp_path / "key.pem", ca_bundle_pem="CA")
    cert, key, bundle = block.materialize(tmp_path / "m")
    assert key == tmp_path / "key.pem"
    assert cert.stat().st_mode & 0o777 == 0o600
    assert cert.read_text() == "CERT"
    assert bundle.read_text() == "CA"


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: PKIMaterialBlock(cert_pem="c", key_path=Path("k")), "ca_bundle"),
        (lambda: PKIMaterialBlock(cert_pem="c", ca_bundle_pem="b"), "key_path"),
        (
            lambda: PKIMaterialBlock(
                cert_pem="c", cert_path=Path("x"), key_path=Path("k"), ca_bundle_pem="b"
            ),
            "not both",
        ),
        (TokenSigningKeyBlock, "key_path"),
        (lambda: ObjectStoreBlock(backend="s3"), "bucket"),
        (lambda: ObjectStoreBlock(backend="local"), "root"),
        (lambda: SandboxPolicyBlock(max_memory_mb=1), "max_memory_mb"),
    ],
)
def test_bad_block_config_is_refused_with_the_field(factory: object, message: str) -> None:
    with pytest.raises(PydanticValidationError, match=message):
        factory()  # type: ignore[operator]
