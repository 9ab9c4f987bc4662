"""No cyxwiz block type has a field that holds a secret (issue 17; SPEC F1, C3, I).

Any Prefect API client reads a block's secret fields with ``include_secrets=true``; the coordinator and
gateway that face nodes and users hold that credential. The rule is checked on every block class the
package registers (``prefect block register -m blocks``), so a new block cannot bring a secret back.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from pydantic import SecretBytes, SecretStr, ValidationError

import blocks
from blocks import EscrowLedgerBlock, ObjectStoreBlock, PKIMaterialBlock, TokenSigningKeyBlock
from blocks.no_secrets import SecretInBlockError

_SECRET_NAME = re.compile(r"passphrase|password|secret|master_key|private|_pem$|token|api_key", re.I)
_PUBLIC_PEM = {"cert_pem", "ca_bundle_pem"}  # certificates and bundles are public


def _block_classes() -> list[type[Block]]:
    found = [getattr(blocks, name) for name in blocks.__all__]
    return [cls for cls in found if isinstance(cls, type) and issubclass(cls, Block)]


def _secret_types(annotation: object) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_secret_types(arg) for arg in typing.get_args(annotation))


def test_every_block_class_is_checked() -> None:
    assert len(_block_classes()) == 6


@pytest.mark.parametrize("cls", _block_classes(), ids=lambda c: c.__name__)
def test_no_block_field_holds_a_secret(cls: type[Block]) -> None:
    for name, info in cls.model_fields.items():
        assert not _secret_types(info.annotation), f"{cls.__name__}.{name} is a secret type"
        if name not in _PUBLIC_PEM:
            assert not _SECRET_NAME.search(name), f"{cls.__name__}.{name} names a secret"


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda p: PKIMaterialBlock(cert_pem="c", key_pem="k", ca_bundle_pem="b"), "key_pem"),
        (lambda p: TokenSigningKeyBlock(private_key_pem="k"), "private_key_pem"),
        (lambda p: EscrowLedgerBlock(keys_dir=p, keys_passphrase="pw"), "keys_passphrase"),
        (lambda p: EscrowLedgerBlock(database_url="postgresql://u:pw@db/x"), "database_url"),
        (lambda p: ObjectStoreBlock(root=p, master_key="bWFzdGVy"), "master_key"),
    ],
)
def test_a_secret_in_any_block_is_refused(factory: typing.Any, field: str, tmp_path: Path) -> None:
    """Attack: a document (an older version's) sets a secret field; positive control: without it, builds."""
    with pytest.raises(ValidationError) as caught:
        factory(tmp_path)
    error = caught.value.errors()[0]["ctx"]["error"]
    assert isinstance(error, SecretInBlockError) and str(error).startswith(f"{field}: ")
    assert "pw" not in str(error).split(":")[0]
    PKIMaterialBlock(cert_pem="c", key_path=tmp_path / "k", ca_bundle_pem="b")
    TokenSigningKeyBlock(key_path=tmp_path / "k")
    EscrowLedgerBlock(keys_dir=tmp_path, database_url="postgresql://u@db/x")
    ObjectStoreBlock(root=tmp_path)
