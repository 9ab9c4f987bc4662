"""The narrow view of a Solana chain the escrow ledger needs, and its in-process LiteSVM implementation.

:class:`Chain` is what :class:`~cyxwiz.ledger.ledger.EscrowLedger` talks to. Two implementations exist:
:class:`LocalChain` (LiteSVM in this process, for unit tests and inside the local ledger service) and
:class:`~cyxwiz.ledger.rpc.RpcChain` (solana-py over JSON-RPC: the local ledger service or a real
cluster). Both keep cluster semantics the ledger relies on for crash safety (F2):

* a transaction's signature is its identity: sending the same signed bytes twice never executes twice
  (``AlreadyProcessed``), also across a service restart (the signature set is persisted);
* a blockhash is valid up to ``last_valid_block_height``; once the block height has passed it, a
  transaction signed with it can never land, so re-preparing is safe;
* with preflight (the RPC default), a transaction that fails simulation leaves no trace (no fee);
  without it (``skipPreflight``, and the in-process default: the simulation would double the chain's
  work per transaction), a failing transaction lands as failed, pays its fee, and is refused all the same.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from solders.account import Account
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import (
    InstructionErrorCustom,
    InstructionErrorFieldless,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
)

from cyxwiz.errors import LedgerError
from cyxwiz.ledger import snapshot as snapshot_mod

TOKEN_ACCOUNT_AMOUNT = slice(64, 72)
SYSVAR_OWNER = Pubkey.from_string("Sysvar1111111111111111111111111111111111111")


@dataclass(frozen=True)
class SignatureStatus:
    """What the chain knows about a signature: the slot it landed in and its error, if it failed."""

    slot: int
    err: str | None = None


class TransactionRejectedError(LedgerError):
    """The chain refused a transaction before it landed (preflight): nothing moved, no fee was paid.

    ``reason`` is the chain's error name (``BlockhashNotFound``, ``AlreadyProcessed``,
    ``InstructionError(... MissingRequiredSignature)``...).
    """

    code = "ledger-tx-rejected"

    def __init__(self, reason: str, *, logs: tuple[str, ...] = (), err_json: Any = None) -> None:
        super().__init__(f"transaction rejected by the chain: {reason}", rule="F2")
        self.reason = reason
        self.logs = logs
        self.err_json = err_json

    @property
    def blockhash_expired(self) -> bool:
        return "BlockhashNotFound" in self.reason

    @property
    def already_processed(self) -> bool:
        return "AlreadyProcessed" in self.reason


class Chain(Protocol):
    """The subset of Solana the ledger uses (mirrors JSON-RPC methods of the same names)."""

    def latest_blockhash(self) -> tuple[Hash, int]:
        """(blockhash, last valid block height)."""
        ...

    def block_height(self) -> int: ...

    def send_raw(self, tx: bytes) -> str:
        """Send signed wire bytes; return the signature (base58). Raises TransactionRejectedError."""
        ...

    def signature_status(self, signature: str) -> SignatureStatus | None: ...

    def get_account(self, pubkey: Pubkey) -> Account | None: ...

    def lamports(self, pubkey: Pubkey) -> int: ...

    def token_amount(self, pubkey: Pubkey) -> int | None:
        """Base units held by an SPL token account, None when the account does not exist."""
        ...

    def minimum_rent(self, data_len: int) -> int: ...

    def airdrop(self, pubkey: Pubkey, lamports: int) -> str: ...

    def close(self) -> None: ...


def error_name(err: object) -> str:
    """A stable text for a solders TransactionErrorType (the RPC's own names appear in it)."""
    text = str(err)
    return text.removeprefix("TransactionErrorFieldless.")


def error_json(err: object) -> Any:
    """The JSON-RPC shape of a TransactionErrorType (as a validator sends it), or None when unmapped.

    solders' own ``to_json`` is not the RPC shape, and a client parsing an unexpected shape panics; an
    unmapped error is sent as ``null`` with the reason in the message instead.
    """
    if isinstance(err, TransactionErrorFieldless):
        return error_name(err)
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        if isinstance(inner, InstructionErrorFieldless):
            return {"InstructionError": [err.index, str(inner).rsplit(".", 1)[-1]]}
        if isinstance(inner, InstructionErrorCustom):
            return {"InstructionError": [err.index, {"Custom": inner.code}]}
    return None


def _never_executed(err: object) -> bool:
    """Errors of a transaction that was never executed (no fee, no status): bad blockhash, no fee money."""
    name = error_name(err)
    return any(k in name for k in ("BlockhashNotFound", "AlreadyProcessed", "InsufficientFundsForFee",
                                   "AccountNotFound", "SignatureFailure"))  # fmt: skip


def _status_err(err: object) -> str:
    """A failed transaction's status error as the RPC shows it (JSON), never ``null``."""
    return json.dumps(error_json(err) or error_name(err))


def rejected(err: object, logs: list[str]) -> TransactionRejectedError:
    return TransactionRejectedError(error_name(err), logs=tuple(logs), err_json=error_json(err))


class LocalChain:
    """LiteSVM in this process with cluster-like signature and blockhash semantics and optional persistence.

    Thread-safe by a lock; note that the LiteSVM object itself must only be touched while holding it.
    ``snapshot`` (a file path) makes every committed transaction persist the accounts it touched, the
    signature statuses and the block height, so a restarted service keeps balances and never re-executes
    an old signed transaction.
    """

    def __init__(self, *, snapshot: Path | None = None, preflight: bool = False) -> None:
        self.preflight = preflight
        self._lock = threading.RLock()
        self._svm = LiteSVM()
        self._height = 0
        self._statuses: dict[str, SignatureStatus] = {}
        self._accounts: dict[str, Account] = {}
        self._snapshot = snapshot
        if snapshot is not None and snapshot.exists():
            state = snapshot_mod.load(snapshot)  # raises LedgerError on corruption: refuse to start
            for key, account in state.accounts.items():
                self._svm.set_account(Pubkey.from_string(key), account)
            self._accounts = dict(state.accounts)
            self._statuses = {sig: SignatureStatus(slot, err) for sig, (slot, err) in state.statuses.items()}
            # LiteSVM's blockhash sequence is deterministic from genesis: move past every hash handed out
            # before the restart, so no transaction signed then can execute again.
            for _ in range(state.height + 1):
                self._svm.expire_blockhash()
            self._height = state.height + 1
            self._persist()

    # -- Chain protocol ---------------------------------------------------------------------------

    def latest_blockhash(self) -> tuple[Hash, int]:
        with self._lock:
            return self._svm.latest_blockhash(), self._height

    def block_height(self) -> int:
        with self._lock:
            return self._height

    def send_raw(self, tx: bytes, *, preflight: bool | None = None) -> str:
        try:
            parsed = VersionedTransaction.from_bytes(tx)
        except Exception as exc:
            raise TransactionRejectedError(f"malformed transaction: {exc}") from None
        signature = str(parsed.signatures[0])
        with self._lock:
            if signature in self._statuses:
                raise TransactionRejectedError("AlreadyProcessed")
            if self.preflight if preflight is None else preflight:
                # As an RPC node does by default: a failing transaction is refused without a fee.
                sim = self._svm.simulate_transaction(parsed)
                if isinstance(sim, FailedTransactionMetadata):
                    raise rejected(sim.err(), sim.meta().logs())
            result = self._svm.send_transaction(parsed)
            if isinstance(result, FailedTransactionMetadata):
                if not _never_executed(result.err()):
                    # It landed as failed (fee paid): its status says so, as on a cluster.
                    self._statuses[signature] = SignatureStatus(self._height, _status_err(result.err()))
                    self._touch(parsed.message.account_keys)
                raise rejected(result.err(), result.meta().logs())
            self._statuses[signature] = SignatureStatus(self._height)
            self._touch(parsed.message.account_keys)
            return signature

    def signature_status(self, signature: str) -> SignatureStatus | None:
        with self._lock:
            return self._statuses.get(signature)

    def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        with self._lock:
            return [self._statuses.get(s) for s in signatures]

    def get_account(self, pubkey: Pubkey) -> Account | None:
        with self._lock:
            account = self._svm.get_account(pubkey)
        if account is None or (account.lamports == 0 and not account.data):
            return None
        return account

    def lamports(self, pubkey: Pubkey) -> int:
        account = self.get_account(pubkey)
        return 0 if account is None else account.lamports

    def token_amount(self, pubkey: Pubkey) -> int | None:
        account = self.get_account(pubkey)
        if account is None or len(account.data) < 72:
            return None
        return int.from_bytes(account.data[TOKEN_ACCOUNT_AMOUNT], "little")

    def minimum_rent(self, data_len: int) -> int:
        with self._lock:
            return self._svm.minimum_balance_for_rent_exemption(data_len)

    def airdrop(self, pubkey: Pubkey, lamports: int) -> str:
        with self._lock:
            result = self._svm.airdrop(pubkey, lamports)
            if isinstance(result, FailedTransactionMetadata):
                raise rejected(result.err(), result.meta().logs())
            signature = str(result.signature())
            self._statuses[signature] = SignatureStatus(self._height)
            self._touch([pubkey])
            return signature

    def close(self) -> None:
        return None

    # -- local extras (the service exposes these; a real cluster has its own clock) ---------------

    def expire_blockhash(self) -> int:
        """Advance one block: every transaction signed with an earlier blockhash is now expired."""
        with self._lock:
            self._svm.expire_blockhash()
            self._height += 1
            self._persist()
            return self._height

    def new_funded_keypair(self, lamports: int) -> Keypair:
        keypair = Keypair()
        self.airdrop(keypair.pubkey(), lamports)
        return keypair

    # -- persistence ------------------------------------------------------------------------------

    def _touch(self, keys: list[Pubkey]) -> None:
        if self._snapshot is None:  # the copies below exist only to be written to the snapshot
            return
        for key in keys:
            account = self._svm.get_account(key)
            if account is None:
                self._accounts.pop(str(key), None)
            elif account.executable or account.owner == SYSVAR_OWNER:
                continue  # programs and sysvars come with LiteSVM itself
            else:
                self._accounts[str(key)] = account
        self._persist()

    def _persist(self) -> None:
        if self._snapshot is None:
            return
        snapshot_mod.save(
            self._snapshot,
            snapshot_mod.SnapshotState(
                height=self._height,
                accounts=self._accounts,
                statuses={sig: (s.slot, s.err) for sig, s in self._statuses.items()},
            ),
        )
