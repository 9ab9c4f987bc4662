"""The local ledger service: JSON-RPC protocol edges, snapshot integrity, restart keeps balances (F2, D1)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from solders.keypair import Keypair

from cyxwiz.ledger.chain import LocalChain
from cyxwiz.ledger.embedded import LocalLedgerHandle
from cyxwiz.ledger.snapshot import SnapshotCorruptError


def _rpc(url: str, method: str, params: list[object] | None = None) -> dict[str, object]:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params or []}
    result: dict[str, object] = httpx.post(url, json=body, timeout=10).json()
    return result


def test_protocol_refusals(ledger_service: LocalLedgerHandle) -> None:
    url = ledger_service.rpc_url
    assert _rpc(url, "getHealth")["result"] == "ok"
    assert _rpc(url, "setAccount")["error"] == {"code": -32601, "message": "Method not found"}
    bad = _rpc(url, "sendTransaction", ["not base64!", {"encoding": "base64"}])
    assert bad["error"]["code"] == -32602  # type: ignore[index]
    b58 = _rpc(url, "sendTransaction", ["abc", {}])
    assert "only base64" in b58["error"]["message"]  # type: ignore[index]
    assert _rpc(url, "requestAirdrop", [str(Keypair().pubkey()), -1])["error"]["code"] == -32602  # type: ignore[index]
    assert httpx.get(url, timeout=10).status_code == 405
    assert httpx.post(url, content=b"x" * (2 << 20), timeout=10).status_code == 413
    assert httpx.post(url, content=b"{", timeout=10).json()["error"]["code"] == -32700


def test_dev_method_is_off_unless_enabled(tmp_path: Path) -> None:
    with LocalLedgerHandle(state_dir=tmp_path / "svc") as handle:
        assert _rpc(handle.rpc_url, "cyxwiz_expireBlockhash")["error"]["code"] == -32601  # type: ignore[index]


def test_snapshot_restores_balances_and_signatures_and_blocks_replay(tmp_path: Path) -> None:
    snap = tmp_path / "snap.json"
    chain = LocalChain(snapshot=snap)
    wallet = Keypair()
    signature = chain.airdrop(wallet.pubkey(), 2_000_000)
    assert snap.stat().st_mode & 0o077 == 0
    restarted = LocalChain(snapshot=snap)
    assert restarted.lamports(wallet.pubkey()) == 2_000_000
    assert restarted.signature_status(signature) is not None
    assert restarted.block_height() > chain.block_height()  # old blockhashes are expired after a restart
    assert restarted.latest_blockhash()[0] != chain.latest_blockhash()[0]


@pytest.mark.parametrize(
    "damage",
    ["truncate", "edit_balance", "garbage", "wrong_format"],
)
def test_corrupt_snapshot_is_refused(tmp_path: Path, damage: str) -> None:
    snap = tmp_path / "snap.json"
    chain = LocalChain(snapshot=snap)
    chain.airdrop(Keypair().pubkey(), 2_000_000)
    text = snap.read_text()
    if damage == "truncate":
        snap.write_text(text[: len(text) // 2])
    elif damage == "edit_balance":
        doc = json.loads(text)
        doc["body"]["height"] += 5  # any edit without a matching checksum
        snap.write_text(json.dumps(doc))
    elif damage == "garbage":
        snap.write_bytes(b"\x00\xff" * 10)
    else:
        doc = json.loads(text)
        doc["body"]["format"] = "something-else"
        snap.write_text(json.dumps(doc))
    with pytest.raises(SnapshotCorruptError, match="ledger snapshot is corrupt"):
        LocalChain(snapshot=snap)


def test_only_confirmed_or_finalized_counts_as_landed() -> None:
    """F2: a ``processed`` signature may still be rolled back: the ledger waits for ``confirmed`` (or, when
    configured, ``finalized``) before it records a move as done."""
    from solders.transaction_status import TransactionConfirmationStatus as Level
    from solders.transaction_status import TransactionStatus

    from cyxwiz.errors import LedgerError
    from cyxwiz.ledger.rpc import RpcChain, landed

    def status(level: Level | None) -> TransactionStatus:
        return TransactionStatus(5, None, None, None, level)

    assert landed(status(Level.Processed), "confirmed") is None
    assert landed(status(None), "confirmed") is None
    assert landed(status(Level.Confirmed), "confirmed") is not None
    assert landed(status(Level.Confirmed), "finalized") is None
    assert landed(status(Level.Finalized), "finalized") is not None
    with pytest.raises(LedgerError, match="confirmed"):
        RpcChain(url="http://127.0.0.1:9", commitment="processed")
