"""RpcChain: the ledger's Chain over Solana JSON-RPC through solana-py (local ledger service or a cluster).

solana-py 0.41 ships only ``AsyncClient``; the ledger's API is synchronous (it is called from Prefect
tasks, the CLI and the coordinator alike), so the client lives on a private event loop in a daemon thread
and each call is handed to it. That also works when the caller already runs an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.account import Account
from solders.hash import Hash
from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.errors import LedgerError
from cyxwiz.ledger.chain import TOKEN_ACCOUNT_AMOUNT, SignatureStatus, TransactionRejectedError

T = TypeVar("T")


class LedgerUnavailableError(LedgerError):
    """The RPC endpoint could not be reached or answered garbage; whether a send landed is unknown."""

    code = "ledger-unavailable"
    http_status = 503


class RpcChain:
    """:class:`~cyxwiz.ledger.chain.Chain` over JSON-RPC. ``close()`` when done."""

    def __init__(self, *, url: str, timeout_s: float = 10.0, commitment: str = "confirmed") -> None:
        if commitment not in ACCEPTED:
            raise LedgerError("commitment must be 'confirmed' or 'finalized'", field="commitment", rule="F2")
        self.url = url
        self.commitment = commitment
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cyxwiz-ledger-rpc", daemon=True)
        self._thread.start()
        self._client = self._run(self._make_client())

    async def _make_client(self) -> AsyncClient:
        # Created on the loop that will use it; plain HTTP/1.1 to a loopback service or TLS to a cluster.
        return AsyncClient(self.url, commitment=Confirmed, timeout=self._timeout_s, http2=False)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout_s + 5)
        except RPCException:
            raise
        except (SolanaRpcException, OSError, TimeoutError) as exc:
            future.cancel()
            raise LedgerUnavailableError(
                f"ledger RPC at {self.url} is unreachable ({type(exc).__name__})", rule="F2"
            ) from None

    # -- Chain protocol ---------------------------------------------------------------------------

    def latest_blockhash(self) -> tuple[Hash, int]:
        value = self._run(self._client.get_latest_blockhash()).value
        return value.blockhash, value.last_valid_block_height

    def block_height(self) -> int:
        return int(self._run(self._client.get_block_height()).value)

    def send_raw(self, tx: bytes) -> str:
        opts = TxOpts(skip_confirmation=True, preflight_commitment=Confirmed)
        try:
            return str(self._run(self._client.send_raw_transaction(tx, opts=opts)).value)
        except RPCException as exc:
            # The server's message names the chain's error (BlockhashNotFound, AlreadyProcessed, ...).
            raise TransactionRejectedError(_describe(exc)) from None

    def signature_status(self, signature: str) -> SignatureStatus | None:
        return self.signature_statuses([signature])[0]

    def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        """Many signatures in one call (up to 256): how concurrent escrows poll for confirmation.

        A signature counts as landed only once it reached this chain's commitment (``confirmed`` by
        default, or ``finalized``); ``processed`` may still be rolled back and counts as unknown (F2).
        """
        statuses: list[SignatureStatus | None] = []
        for start in range(0, len(signatures), 256):
            chunk = [Signature.from_string(s) for s in signatures[start : start + 256]]
            resp = self._run(self._client.get_signature_statuses(chunk, search_transaction_history=True))
            statuses += [landed(status, self.commitment) for status in resp.value]
        return statuses

    def get_account(self, pubkey: Pubkey) -> Account | None:
        value = self._run(self._client.get_account_info(pubkey)).value
        if value is None:
            return None
        return Account(
            lamports=value.lamports,
            data=bytes(value.data),
            owner=value.owner,
            executable=value.executable,
            rent_epoch=value.rent_epoch,
        )

    def lamports(self, pubkey: Pubkey) -> int:
        return int(self._run(self._client.get_balance(pubkey)).value)

    def token_amount(self, pubkey: Pubkey) -> int | None:
        account = self.get_account(pubkey)
        if account is None or len(account.data) < 72:
            return None
        return int.from_bytes(account.data[TOKEN_ACCOUNT_AMOUNT], "little")

    def minimum_rent(self, data_len: int) -> int:
        return int(self._run(self._client.get_minimum_balance_for_rent_exemption(data_len)).value)

    def airdrop(self, pubkey: Pubkey, lamports: int) -> str:
        signature = str(self._run(self._client.request_airdrop(pubkey, lamports)).value)
        deadline = time.monotonic() + self._timeout_s
        while self.signature_status(signature) is None:
            if time.monotonic() > deadline:
                raise LedgerError(f"airdrop {signature} not confirmed")
            time.sleep(0.05)
        return signature

    def call(self, method: str, params: list[Any] | None = None) -> Any:
        """A raw JSON-RPC call (for the local service's dev methods); returns ``result``."""
        import httpx

        response = httpx.post(
            self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=10
        )
        payload = response.json()
        if "error" in payload:
            raise LedgerError(f"{method}: {payload['error'].get('message')}")
        return payload["result"]

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(LedgerError):
            self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


ACCEPTED = {"confirmed": ("confirmed", "finalized"), "finalized": ("finalized",)}


def landed(status: Any, commitment: str) -> SignatureStatus | None:
    """A transaction status as the ledger sees it: None until it reached ``commitment``."""
    if status is None:
        return None
    level = status.confirmation_status
    name = str(level).rsplit(".", 1)[-1].lower() if level is not None else "processed"
    if name not in ACCEPTED[commitment]:
        return None
    return SignatureStatus(slot=status.slot, err=None if status.err is None else str(status.err))


def _describe(exc: RPCException) -> str:
    detail = exc.args[0] if exc.args else exc
    message = getattr(detail, "message", None)
    return str(message) if message else str(detail)
